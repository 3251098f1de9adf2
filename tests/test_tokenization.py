import itertools

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_vanilla_transformer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, train_bpe_tokenizer

SOURCES = [
    "the quick brown fox jumps over the lazy dog .",
    "a small house stands near the river , doesn't it ?",
    "the dog sleeps under the table .",
    "two red birds sing in the garden",
] * 5
TARGETS = [
    "der schnelle braune fuchs springt über den faulen hund .",
    "ein kleines haus steht nahe dem fluss , nicht wahr ?",
    "der hund schläft unter dem tisch .",
    "zwei rote vögel singen im garten",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(itertools.chain(SOURCES, TARGETS), vocab_size=300, min_frequency=1)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
        UNK_ID,
    )


def test_one_vocabulary_covers_both_languages(tokenizer):
    for word in ("▁house", "▁haus", "▁garden", "▁garten"):
        assert word in tokenizer.get_vocab()
    assert len(tokenizer) <= 300


def test_sequences_end_with_eos_and_start_without_bos(tokenizer):
    ids = tokenizer("the dog sleeps")["input_ids"]
    assert ids[-1] == EOS_ID
    assert BOS_ID not in ids
    assert ids.count(EOS_ID) == 1


def test_text_target_gives_labels(tokenizer):
    encoded = tokenizer(SOURCES[:2], text_target=TARGETS[:2])
    assert set(encoded) == {"input_ids", "attention_mask", "labels"}
    assert encoded["labels"] == tokenizer(TARGETS[:2])["input_ids"]
    assert all(labels[-1] == EOS_ID for labels in encoded["labels"])


@pytest.mark.parametrize("text", SOURCES[:4] + TARGETS[:4] + ["house garden", "a , b . c"])
def test_decode_gives_the_text_back(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_whitespace_runs_are_normalised(tokenizer):
    ids = tokenizer("  the  dog\tsleeps \n")["input_ids"]
    assert ids == tokenizer("the dog sleeps")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the dog sleeps"


def test_unseen_characters_become_unk(tokenizer):
    assert UNK_ID in tokenizer("the dog 🦊")["input_ids"]


def test_save_and_reload_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = SOURCES[:4] + ["unseen wörds 🦊  spaced"]
    assert reloaded(texts, text_target=TARGETS[:4] + ["x"]) == tokenizer(
        texts, text_target=TARGETS[:4] + ["x"]
    )
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert reloaded.model_max_length == tokenizer.model_max_length == 1024
    assert reloaded.decode(reloaded("a , b .")["input_ids"], skip_special_tokens=True) == "a , b ."


def test_vocab_size_is_respected():
    small = train_bpe_tokenizer(SOURCES + TARGETS, vocab_size=80, min_frequency=1)
    large = train_bpe_tokenizer(SOURCES + TARGETS, vocab_size=200, min_frequency=1)
    assert len(small) == 80
    assert len(large) > 80


def test_a_vocabulary_far_smaller_than_asked_is_said(caplog):
    with caplog.at_level("INFO", logger="hf_vanilla_transformer.tokenization"):
        tokenizer = train_bpe_tokenizer(SOURCES + TARGETS, vocab_size=37000, min_frequency=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"has {len(tokenizer)} tokens, far fewer than the 37000 asked for" in warnings[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_vanilla_transformer.tokenization"):
        train_bpe_tokenizer(SOURCES + TARGETS, vocab_size=80, min_frequency=1)  # the size asked: no warning
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_min_frequency_limits_merges():
    text = ["abcd"] * 3 + ["wxyz"]
    vocab = train_bpe_tokenizer(text, vocab_size=100, min_frequency=2).get_vocab()
    assert "▁abcd" in vocab
    assert "▁wxyz" not in vocab


def test_empty_texts_raise():
    with pytest.raises(ValueError, match="texts is empty"):
        train_bpe_tokenizer(iter([]))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"vocab_size": 4}, ValueError, "vocab_size must be at least 5, got 4"),
        ({"vocab_size": 8000.0}, TypeError, "vocab_size must be an int"),
        ({"min_frequency": 0}, ValueError, "min_frequency must be at least 1"),
        ({"model_max_length": 0}, ValueError, "model_max_length must be at least 1"),
    ],
)
def test_invalid_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        train_bpe_tokenizer(SOURCES, **kwargs)


def test_texts_must_be_strings():
    with pytest.raises(TypeError, match="single str"):
        train_bpe_tokenizer("the dog sleeps")
    with pytest.raises(TypeError, match="item 1 is list"):
        train_bpe_tokenizer(["the dog", ["the", "cat"]])
