"""The built-in task: its layout and sizes, seeds, disjoint splits, and a grammar with one translation a sentence."""

import itertools

import pytest
from datasets import DatasetDict

from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset


@pytest.fixture(scope="module")
def builtin():
    return load_builtin_dataset(seed=0, train_size=3000, validation_size=200, test_size=200)


def _sources(split) -> list[str]:
    return [pair[SOURCE_LANG] for pair in split["translation"]]


def test_builtin_layout_and_sizes(builtin):
    assert isinstance(builtin, DatasetDict)
    assert {split: len(builtin[split]) for split in builtin} == {
        "train": 3000,
        "validation": 200,
        "test": 200,
    }
    assert builtin["train"].column_names == ["translation"]
    assert set(builtin["train"][0]["translation"]) == {SOURCE_LANG, TARGET_LANG} == {"en", "toy"}


def test_builtin_same_seed_same_data_other_seed_other_data(builtin):
    again = load_builtin_dataset(seed=0, train_size=3000, validation_size=200, test_size=200)
    other = load_builtin_dataset(seed=1, train_size=3000, validation_size=200, test_size=200)
    for split in builtin:
        assert builtin[split]["translation"] == again[split]["translation"]
    assert builtin["train"]["translation"] != other["train"]["translation"]

    # The seed also draws the target words, not only the sentences.
    def target_words(dataset):
        return {word for pair in dataset["train"]["translation"] for word in pair[TARGET_LANG].split()}

    assert len(target_words(builtin) & target_words(other)) < 0.2 * len(target_words(builtin))


def test_builtin_splits_are_disjoint(builtin):
    train, validation, test = (set(_sources(builtin[split])) for split in ("train", "validation", "test"))
    assert len(train) == 3000 and len(validation) == 200 and len(test) == 200
    assert not train & validation
    assert not train & test
    assert not validation & test


def test_builtin_evaluation_splits_do_not_depend_on_train_size(builtin):
    smaller = load_builtin_dataset(seed=0, train_size=10, validation_size=200, test_size=200)
    assert smaller["validation"]["translation"] == builtin["validation"]["translation"]
    assert smaller["test"]["translation"] == builtin["test"]["translation"]


def test_builtin_lengths_and_vocabulary(builtin):
    sources = [pair[SOURCE_LANG].split() for split in builtin.values() for pair in split["translation"]]
    targets = [pair[TARGET_LANG].split() for split in builtin.values() for pair in split["translation"]]
    source_lengths = [len(words) for words in sources]
    assert min(source_lengths) == 3
    assert max(source_lengths) <= 25
    assert max(source_lengths) >= 20
    assert 200 <= len(set(itertools.chain.from_iterable(sources))) <= 400
    assert 200 <= len(set(itertools.chain.from_iterable(targets))) <= 450


def test_builtin_words_translate_consistently(builtin):
    """Every source word comes with one fixed target word: the mapping has no randomness to memorise."""
    partners: dict[str, set[str]] = {}
    for pair in builtin["train"]["translation"]:
        target = set(pair[TARGET_LANG].split())
        for word in pair[SOURCE_LANG].split():
            partners[word] = partners[word] & target if word in partners else set(target)
    assert partners
    assert not [word for word, common in partners.items() if not common]


def test_builtin_reorders_words(builtin):
    # The docstring's example, whose order (verb last, adjectives after the noun) differs from English.
    pair = {
        "en": "my chairs touch those pictures near their old busy soldier",
        "toy": "mirpakfal tanur gu vioral evear bekpu zor zekres rehispufal von bal vebutinvik",
    }
    assert pair in builtin["validation"]["translation"]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"train_size": 0}, ValueError, "train_size must be at least 1, got 0"),
        ({"validation_size": -1}, ValueError, "validation_size must be at least 0"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
def test_builtin_invalid_sizes(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        load_builtin_dataset(**kwargs)
