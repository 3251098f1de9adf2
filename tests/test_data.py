import copy
import dataclasses
import json
import logging
import re

import pytest
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from hf_vanilla_transformer import data
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.data import (
    FilterStats,
    StreamFilterStats,
    load_parallel_data,
    load_translation_data,
    preprocess_dataset,
)
from hf_vanilla_transformer.tokenization import EOS_ID, train_bpe_tokenizer

PAIRS = [
    ("the cat sleeps", "die Katze schläft"),
    ('she said "no"', 'sie sagte "nein"'),
    ("NA", "1984"),
    ("a, b and c", "a, b und c"),
]


@pytest.fixture(scope="module")
def builtin():
    return load_builtin_dataset(seed=0, train_size=3000, validation_size=200, test_size=200)


# ----------------------------------------------------------------------------------------------
# Loading user corpora
# ----------------------------------------------------------------------------------------------


def _write_jsonl(path, records):
    path.write_text(
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8"
    )
    return path


def _pairs_of(dataset, source_lang="en", target_lang="de") -> list[tuple[str, str]]:
    return [(pair[source_lang], pair[target_lang]) for pair in dataset["translation"]]


def _load(tmp_path, **kwargs):
    return load_parallel_data(source_lang="en", target_lang="de", cache_dir=str(tmp_path / "cache"), **kwargs)


def test_jsonl_with_translation_column(tmp_path):
    path = _write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": i, "translation": {"en": s, "de": t}} for i, (s, t) in enumerate(PAIRS)],
    )
    loaded = _load(tmp_path, train_file=str(path))
    assert isinstance(loaded, DatasetDict)
    assert loaded["train"].column_names == ["translation"]
    assert _pairs_of(loaded["train"]) == PAIRS


def test_load_translation_data_gives_the_named_data_or_else_the_builtin_task(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "test.jsonl", [{"en": s, "de": t} for s, t in PAIRS])
    loaded, source_lang, target_lang = load_translation_data(test_file=str(path), source_lang="en", target_lang="de")
    assert (list(loaded), source_lang, target_lang) == (["test"], "en", "de")
    assert _pairs_of(loaded["test"]) == PAIRS
    with pytest.raises(ValueError, match="Give source_lang and target_lang"):
        load_translation_data(test_file=str(path))
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.data"):
        builtin, source_lang, target_lang = load_translation_data(source_lang="de", builtin_train_size=5)
    assert (source_lang, target_lang, len(builtin["train"])) == (SOURCE_LANG, TARGET_LANG, 5)
    assert "the built-in task (en -> toy) ignores source_lang and target_lang" in caplog.text


def test_jsonl_with_flat_columns(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"en": s, "de": t, "score": 1.0} for s, t in PAIRS])
    loaded = _load(tmp_path, train_file=path)
    assert loaded["train"].column_names == ["translation"]
    assert _pairs_of(loaded["train"]) == PAIRS


def test_json_document_with_named_columns(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"src": s, "tgt": t} for s, t in PAIRS]), encoding="utf-8")
    loaded = _load(tmp_path, train_file=str(path), source_column="src", target_column="tgt")
    assert _pairs_of(loaded["train"]) == PAIRS


def test_csv_keeps_every_cell_as_text(tmp_path):
    path = tmp_path / "train.csv"
    lines = ["en,de"] + ['"' + s.replace('"', '""') + '","' + t.replace('"', '""') + '"' for s, t in PAIRS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = _load(tmp_path, train_file=str(path))
    assert _pairs_of(loaded["train"]) == PAIRS  # "NA" is not a gap, "1984" not a number


def test_tsv_treats_quotes_as_text(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("de\ten\n" + "".join(f"{t}\t{s}\n" for s, t in PAIRS), encoding="utf-8")
    loaded = _load(tmp_path, train_file=str(path))
    assert _pairs_of(loaded["train"]) == PAIRS


@pytest.mark.parametrize("as_tuple", [False, True])
def test_aligned_text_files(tmp_path, as_tuple):
    source, target = tmp_path / "train.en", tmp_path / "train.de"
    source.write_text("\n".join(s for s, _ in PAIRS) + "\n", encoding="utf-8")
    target.write_text("\r\n".join(t for _, t in PAIRS), encoding="utf-8")  # Windows endings, no final newline
    train_file = (source, target) if as_tuple else f"{source},{target}"
    loaded = _load(tmp_path, train_file=train_file)
    assert _pairs_of(loaded["train"]) == PAIRS


def test_text_files_reread_after_an_edit(tmp_path):
    source, target = tmp_path / "train.en", tmp_path / "train.de"
    source.write_text("one\n", encoding="utf-8")
    target.write_text("eins\n", encoding="utf-8")
    assert _pairs_of(_load(tmp_path, train_file=(source, target))["train"]) == [("one", "eins")]
    target.write_text("zwei und mehr\n", encoding="utf-8")
    assert _pairs_of(_load(tmp_path, train_file=(source, target))["train"]) == [("one", "zwei und mehr")]


def test_splits_may_mix_formats(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [{"en": s, "de": t} for s, t in PAIRS])
    validation = tmp_path / "valid.tsv"
    validation.write_text("en\tde\nhello\thallo\n", encoding="utf-8")
    (tmp_path / "test.en").write_text("yes\n", encoding="utf-8")
    (tmp_path / "test.de").write_text("ja\n", encoding="utf-8")
    loaded = _load(
        tmp_path,
        train_file=train,
        validation_file=validation,
        test_file=[tmp_path / "test.en", tmp_path / "test.de"],
    )
    assert list(loaded) == ["train", "validation", "test"]
    assert _pairs_of(loaded["validation"]) == [("hello", "hallo")]
    assert _pairs_of(loaded["test"]) == [("yes", "ja")]


def test_streaming_jsonl(tmp_path):
    path = _write_jsonl(
        tmp_path / "train.jsonl", [{"en": s, "de": t, "id": i} for i, (s, t) in enumerate(PAIRS)]
    )
    loaded = _load(tmp_path, train_file=path, streaming=True)
    assert isinstance(loaded, IterableDatasetDict)
    assert isinstance(loaded["train"], IterableDataset)
    assert [(row["translation"]["en"], row["translation"]["de"]) for row in loaded["train"]] == PAIRS
    assert list(next(iter(loaded["train"]))) == ["translation"]


def test_streaming_text_pair(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    loaded = _load(tmp_path, train_file=f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}", streaming=True)
    assert [row["translation"] for row in loaded["train"]] == [
        {"en": "one", "de": "eins"},
        {"en": "two", "de": "zwei"},
    ]


def test_hub_name_goes_to_load_dataset(tmp_path, monkeypatch):
    calls = []
    hub = DatasetDict({"train": Dataset.from_dict({"translation": [{"de": t, "en": s} for s, t in PAIRS]})})

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return hub

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    loaded = load_parallel_data(
        dataset_name="wmt14",
        dataset_config_name="de-en",
        source_lang="en",
        target_lang="de",
        cache_dir="/somewhere",
    )
    assert calls == [(("wmt14", "de-en"), {"cache_dir": "/somewhere", "streaming": False})]
    assert _pairs_of(loaded["train"]) == PAIRS


def test_hub_dataset_without_the_language(monkeypatch):
    hub = DatasetDict({"train": Dataset.from_dict({"translation": [{"de": "a", "en": "b"}]})})
    monkeypatch.setattr(data.datasets, "load_dataset", lambda *args, **kwargs: hub)
    with pytest.raises(ValueError, match=r"'wmt14'.*languages \['de', 'en'\].*target_lang='fr'"):
        load_parallel_data(dataset_name="wmt14", source_lang="en", target_lang="fr")


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        _load(tmp_path, train_file=str(missing))
    (tmp_path / "a.en").write_text("x\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"validation_file: .*a\.de"):
        _load(tmp_path, validation_file=f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported extension '\.txt'.*\.jsonl.*'train\.en,train\.de'"):
        _load(tmp_path, train_file=str(path))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"en": "a", "de": "b"}\n\n{"en": "c", "de": \n{"en": "e", "de": "f"}\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: not valid JSON")):
        _load(tmp_path, train_file=path)


def test_malformed_json_line_when_streaming(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"en": "a", "de": "b"}\n{"en": "c" "de": "d"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not valid JSON")):
        _load(tmp_path, train_file=path, streaming=True)


def test_malformed_csv_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("en,de\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*line 3"):
        _load(tmp_path, train_file=path)


NESTED = [{"translation": {"en": s, "de": t}} for s, t in PAIRS]
FLAT = [{"en": s, "de": t} for s, t in PAIRS]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (NESTED[:3] + [{"translation": {"en": "a cat"}}], "line 4: no 'de' text"),
        (NESTED[:1] + [{"translation": {"en": "a cat", "fr": "un chat"}}] + NESTED, "line 2: no 'de' text"),
        (FLAT[:2] + [{"en": "a cat"}] + FLAT, "line 3: no 'de' text"),
        (FLAT[:2] + [{"en": "a cat", "de": None}], "line 3: 'de' is null, expected text"),
        (NESTED[:2] + [{"translation": {"en": "a cat", "de": 5}}], "line 3: 'de' is 5, expected text"),
        (NESTED[:3] + FLAT[:1] + NESTED, 'mixes two forms of record: line 1 is {"translation": {"en": "...", '
                                         '"de": "..."}}, line 4 {"en": "...", "de": "..."}'),
        (FLAT[:2] + NESTED[:1] + FLAT, 'mixes two forms of record: line 1 is {"en": "...", "de": "..."}, line 3'),
    ],
)  # fmt: skip
@pytest.mark.parametrize("streaming", [False, True])
def test_a_record_without_both_texts_names_its_line_wherever_it_is(tmp_path, records, message, streaming):
    path = _write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(ValueError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        list(_load(tmp_path, train_file=path, streaming=streaming)["train"])


def test_a_record_without_both_texts_in_a_json_list_is_named_by_number(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(NESTED[:2] + [{"translation": {"de": "x"}}]), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 3: no 'en' text")):
        _load(tmp_path, train_file=path)


def test_records_that_vary_in_their_extra_keys_still_load(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", NESTED[:2] + [{"translation": {"en": "x", "de": "y", "note": 1}}])
    assert _pairs_of(_load(tmp_path, train_file=path)["train"]) == PAIRS[:2] + [("x", "y")]


@pytest.mark.parametrize("name", ["train.jsonl", "train.tsv", "train.en"])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_binary_file_is_named_with_its_line(tmp_path, name, streaming):
    path = tmp_path / name
    path.write_bytes(b"en\tde\n" + bytes(range(256)) * 4)  # a newline at byte 10 of each run: line 3
    train_file = path
    if name == "train.en":
        (tmp_path / "train.de").write_text("x\n" * _count_lines(path), encoding="utf-8")
        train_file = f"{path},{tmp_path / 'train.de'}"
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: not UTF-8 text (byte 0x80)")):
        list(_load(tmp_path, train_file=train_file, streaming=streaming)["train"])


def _count_lines(path) -> int:
    return path.read_bytes().count(b"\n") + 1

def test_unaligned_text_files_name_both_counts(tmp_path):
    source, target = tmp_path / "train.en", tmp_path / "train.de"
    source.write_text("one\ntwo\nthree\n", encoding="utf-8")
    target.write_text("eins\nzwei\n", encoding="utf-8")
    pattern = re.escape(f"{source} has 3 lines but {target} has 2")
    with pytest.raises(ValueError, match=pattern):
        _load(tmp_path, train_file=(source, target))


@pytest.mark.parametrize(
    ("name", "content"),
    [("train.jsonl", ""), ("train.json", "[]"), ("train.csv", "en,de\n")],
)
def test_empty_training_split(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"The train split is empty: .*" + re.escape(name)):
        _load(tmp_path, train_file=path)


def test_empty_text_pair(tmp_path):
    (tmp_path / "v.en").write_text("", encoding="utf-8")
    (tmp_path / "v.de").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"The validation split is empty"):
        _load(tmp_path, validation_file=(tmp_path / "v.en", tmp_path / "v.de"))


def test_missing_column_lists_the_columns(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"english": "a", "de": "b"}])
    with pytest.raises(ValueError, match=r"no column 'en'; the columns are \['english', 'de'\]"):
        _load(tmp_path, train_file=path)
    with pytest.raises(ValueError, match=r"no column 'source'; the columns are"):
        _load(tmp_path, train_file=path, source_column="source", target_column="de")


def test_missing_language_key_lists_the_languages(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"translation": {"en": "a", "fr": "b"}}])
    with pytest.raises(ValueError, match=r"languages \['en', 'fr'\], but target_lang='de'"):
        _load(tmp_path, train_file=path)


def test_numeric_column_is_not_text(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"en": "a", "de": 3}])
    with pytest.raises(ValueError, match=r"column 'de' holds int64 values, expected text"):
        _load(tmp_path, train_file=path)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, "not neither"),
        ({"dataset_name": "wmt14", "train_file": "x.jsonl"}, "not both"),
        ({"train_file": "a,b,c"}, "is not understood"),
    ],
)
def test_source_arguments(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _load(tmp_path, **kwargs)


def test_languages_must_differ(tmp_path):
    with pytest.raises(ValueError, match="both 'en'"):
        load_parallel_data(train_file="x.jsonl", source_lang="en", target_lang="en")


# ----------------------------------------------------------------------------------------------
# Tokenization and filtering
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(builtin):
    texts = (text for pair in builtin["train"]["translation"] for text in pair.values())
    return train_bpe_tokenizer(texts, vocab_size=1000)


def _raw_split() -> Dataset:
    rows = [
        {"en": "the dog sleeps", "toy": "dog gu sleep"},
        {"en": "", "toy": "empty source"},
        {"en": "empty target", "toy": "   "},
        {"en": " ".join(["the dog sleeps"] * 10), "toy": "short"},
        {"en": "short", "toy": " ".join(["dog gu sleep"] * 10)},
        {"en": "a cat runs", "toy": None},
        {"en": "the cat runs quickly", "toy": "cat gu run"},
    ]
    return Dataset.from_dict({"translation": rows})


def test_preprocess_tokenizes_and_counts_what_it_drops(tokenizer, caplog):
    dataset = DatasetDict({"train": _raw_split(), "validation": _raw_split().select([0])})
    with caplog.at_level(logging.INFO, logger="hf_vanilla_transformer.data"):
        processed, stats = preprocess_dataset(dataset, tokenizer, "en", "toy", 12, 12)
    assert stats == {
        "train": FilterStats(kept=2, dropped_empty=3, dropped_too_long=2),
        "validation": FilterStats(kept=1, dropped_empty=0, dropped_too_long=0),
    }
    assert (
        "train: kept 2 pairs, dropped 3 empty and 2 longer than 12 source / 12 target tokens" in caplog.text
    )
    train = processed["train"]
    assert set(train.column_names) == {
        "input_ids",
        "attention_mask",
        "labels",
        "source_length",
        "target_length",
    }
    first = train[0]
    assert first["input_ids"] == tokenizer("the dog sleeps")["input_ids"]
    assert first["labels"] == tokenizer("dog gu sleep")["input_ids"]
    assert first["labels"][-1] == EOS_ID
    assert first["source_length"] == len(first["input_ids"]) == len(first["attention_mask"])
    assert first["target_length"] == len(first["labels"])
    assert all(length <= 12 for length in list(train["source_length"]) + list(train["target_length"]))


def test_preprocess_never_truncates(tokenizer):
    dataset = _raw_split().select([0, 6])
    longest = max(len(tokenizer(pair["en"])["input_ids"]) for pair in dataset["translation"])
    processed, stats = preprocess_dataset(dataset, tokenizer, "en", "toy", longest - 1, 100)
    assert stats == FilterStats(kept=1, dropped_empty=0, dropped_too_long=1)
    assert max(processed["source_length"]) < longest


def test_preprocess_streaming_is_lazy_gives_the_same_rows_and_counts_as_it_reads(tokenizer):
    eager, counted = preprocess_dataset(_raw_split(), tokenizer, "en", "toy", 12, 12)
    lazy, stats = preprocess_dataset(_raw_split().to_iterable_dataset(), tokenizer, "en", "toy", 12, 12)
    assert isinstance(lazy, IterableDataset)
    assert stats == StreamFilterStats(kept=0, dropped_empty=0, dropped_too_long=0)  # nothing read yet
    assert list(lazy) == list(eager)
    assert dataclasses.astuple(stats) == dataclasses.astuple(counted) == (2, 3, 2)


def test_preprocess_builtin_task_keeps_everything(builtin, tokenizer):
    processed, stats = preprocess_dataset(
        builtin, tokenizer, SOURCE_LANG, TARGET_LANG, 128, 128, desc="builtin"
    )
    assert stats["train"] == FilterStats(kept=3000, dropped_empty=0, dropped_too_long=0)
    decoded = tokenizer.decode(processed["validation"][0]["labels"], skip_special_tokens=True)
    assert decoded == builtin["validation"][0]["translation"][TARGET_LANG]


def test_preprocess_errors(tokenizer):
    with pytest.raises(ValueError, match=r"no 'translation' column; the columns are \['text'\]"):
        preprocess_dataset(Dataset.from_dict({"text": ["a"]}), tokenizer, "en", "toy", 8, 8)
    with pytest.raises(ValueError, match=r"languages \['en', 'toy'\], but source_lang='de'"):
        preprocess_dataset(_raw_split(), tokenizer, "de", "toy", 8, 8)
    with pytest.raises(ValueError, match="max_target_length must be at least 1, got 0"):
        preprocess_dataset(_raw_split(), tokenizer, "en", "toy", 8, 0)
    with pytest.raises(TypeError, match="got list"):
        preprocess_dataset([{"en": "a", "toy": "b"}], tokenizer, "en", "toy", 8, 8)


def test_the_general_tokenizer_call_is_kept_where_the_backend_is_set_up_otherwise(tokenizer):
    # The tokenizer's call turns off a truncation saved in its backend; encoding with the backend alone would keep it.
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(3)
    processed, _ = preprocess_dataset(_raw_split(), truncating, "en", "toy", 100, 100)
    pairs = _raw_split()["translation"]
    sources = [pair["en"] for pair in pairs if (pair["en"] or "").strip() and (pair["toy"] or "").strip()]
    assert processed["input_ids"] == tokenizer(sources)["input_ids"]
    assert max(processed["source_length"]) > 3


def test_a_large_split_is_tokenized_on_every_core(monkeypatch, builtin, tokenizer):
    monkeypatch.setattr(data, "available_cpus", lambda: 4)
    assert data.preprocessing_processes(1_000_000, None) == 4
    assert data.preprocessing_processes(120_000, None) == 2  # each process gets PAIRS_PER_WORKER pairs at least
    assert data.preprocessing_processes(40_000, None) is None  # one process: starting workers would cost more
    assert data.preprocessing_processes(1_000_000, 1) is None and data.preprocessing_processes(10, 3) == 3
    with pytest.raises(ValueError, match="num_proc must be at least 1"):
        data.preprocessing_processes(10, 0)

    monkeypatch.setattr(data, "available_cpus", lambda: 2)
    monkeypatch.setattr(data, "PAIRS_PER_WORKER", 100)
    processes = []
    original = Dataset.map
    def recording_map(self, *args, **kwargs):
        processes.append(kwargs.get("num_proc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", recording_map)
    split = builtin["validation"]
    parallel, parallel_stats = preprocess_dataset(split, tokenizer, SOURCE_LANG, TARGET_LANG, 20, 20)
    assert processes[-1] == 2
    single, single_stats = preprocess_dataset(split, tokenizer, SOURCE_LANG, TARGET_LANG, 20, 20, num_proc=1)
    assert processes[-1] is None
    assert parallel_stats == single_stats and parallel_stats.dropped_too_long > 0
    assert parallel.to_list() == single.to_list()


def test_the_tokenizer_trains_on_a_bounded_random_sample_read_in_batches():
    pairs = [{"en": f"s{i}", "toy": f"t{i}"} for i in range(1000)]
    pairs[3] = {"en": "s3", "toy": ""}
    split = Dataset.from_dict({"translation": pairs})
    texts = list(data.tokenizer_training_texts(split, "en", "toy", max_pairs=100, seed=1, batch_size=30))
    chosen = [int(text[1:]) for text in texts if text.startswith("s")]
    assert len(chosen) == 100 and chosen == sorted(chosen)  # read in the order of the file
    assert max(chosen) > 500  # drawn from the whole split, not its first pairs
    assert sorted(int(text[1:]) for text in texts if text.startswith("t")) == [i for i in chosen if i != 3]
    assert sorted(texts) == sorted(data.tokenizer_training_texts(split, "en", "toy", max_pairs=100, seed=1))
    assert len(list(data.tokenizer_training_texts(split, "en", "toy", max_pairs=None))) == 1999

    stream = split.to_iterable_dataset(num_shards=3)
    texts = list(data.tokenizer_training_texts(stream, "en", "toy", max_pairs=100, batch_size=30))
    assert sorted(text for text in texts if text.startswith("s")) == sorted(f"s{i}" for i in range(100))


@pytest.mark.parametrize("shards", [1, 4])
def test_each_process_tokenizes_its_own_share_of_a_stream(tokenizer, shards):
    nouns = "dog cat bird horse farmer teacher doctor student king queen".split()
    rows = [{"en": f"the {noun} sleeps", "toy": f"{noun} gu sleep"} for noun in nouns]
    stream = Dataset.from_dict({"translation": rows}).to_iterable_dataset(num_shards=shards)
    seen = []
    for rank in range(2):
        share = data.stream_share(stream, rank, 2)
        processed, stats = preprocess_dataset(share, tokenizer, "en", "toy", 64, 64)
        seen.append([tokenizer.decode(example["input_ids"], skip_special_tokens=True) for example in processed])
        assert stats.kept == len(seen[-1])  # tokenized: the share only
    assert sorted(seen[0] + seen[1]) == sorted(row["en"] for row in rows) and len(seen[0]) == len(seen[1]) == 5
    assert data.stream_share(stream, 0, 1) is stream
    with pytest.raises(ValueError, match=r"rank must lie in \[0, world_size\)"):
        data.stream_share(stream, 2, 2)
