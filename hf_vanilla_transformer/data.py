"""Parallel text for translation: user corpora loaded from the Hub or local files, and their tokenized, filtered
splits.

Every loader returns a `DatasetDict` (or `IterableDatasetDict` when streaming) whose splits have one
column, "translation", holding `{source_lang: text, target_lang: text}` dicts, the layout of the
WMT datasets on the Hub (and of the built-in task, `builtin_task.py`). `preprocess_dataset` turns that into model
inputs, dropping the pairs it cannot use and counting them.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, Translation, Value
from datasets.distributed import split_dataset_by_node

from ._validation import check_int
from .builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset

logger = logging.getLogger(__name__)

TRANSLATION_COLUMN = "translation"

# ---------------------------------------------------------------------------------------------
# User corpora: the Hub or local files
# ---------------------------------------------------------------------------------------------


def _translation_features(source_lang: str, target_lang: str) -> Features:
    return Features({TRANSLATION_COLUMN: Translation(languages=[source_lang, target_lang])})


_JSON_SUFFIXES = (".jsonl", ".json")
_CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}

FileArgument = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class _FileSpec:
    """One split's files: a JSON or CSV/TSV file, or an aligned (source, target) text pair."""

    split: str
    paths: tuple[Path, ...]

    @property
    def origin(self) -> str:
        return " + ".join(str(path) for path in self.paths)


def _file_spec(split: str, value: FileArgument) -> _FileSpec:
    if isinstance(value, (str, os.PathLike)):
        parts = str(value).split(",") if isinstance(value, str) else [value]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise TypeError(
            f"{split}_file must be a path, a 'source,target' string or a (source, target) pair of "
            f"paths, got {type(value).__name__}."
        )
    if len(parts) not in (1, 2) or any(not str(part).strip() for part in parts):
        raise ValueError(
            f"{split}_file={value!r} is not understood: give one .jsonl/.json/.csv/.tsv file, or two "
            "aligned text files as 'train.en,train.de' or ('train.en', 'train.de')."
        )
    paths = tuple(Path(str(part).strip()) for part in parts)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{split}_file: {path} does not exist or is not a file.")
    if len(paths) == 1 and paths[0].suffix.lower() not in _JSON_SUFFIXES + tuple(_CSV_SEPARATORS):
        raise ValueError(
            f"{split}_file={str(paths[0])!r} has the unsupported extension {paths[0].suffix!r}: use "
            ".jsonl, .json, .csv or .tsv, or pass plain text as an aligned pair of files "
            "'train.en,train.de' (one sentence per line)."
        )
    return _FileSpec(split, paths)


def _json_problem(path: Path, split: str) -> str | None:
    """Say what is wrong with a JSON file that datasets failed to load: its errors name no line."""
    with path.open(encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):  # one JSON document rather than JSON lines
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}, line {error.lineno}: not valid JSON ({error.msg})."
        return f"The {split} split is empty: {path} holds an empty list." if records == [] else None
    found = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return (
                f"{path}, line {number}: not valid JSON ({error.msg}). Each line must be one object "
                'such as {"translation": {"en": "...", "de": "..."}} or {"en": "...", "de": "..."}.'
            )
        if not isinstance(record, dict):
            return f"{path}, line {number}: expected a JSON object, found {type(record).__name__}."
        found = True
    return None if found else f"The {split} split is empty: {path} has no records."


def _utf8_problem(path: Path) -> str | None:
    """Name the line of the first byte in `path` that is not UTF-8 (a binary or Latin-1 file), if any."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                line += error.object.count(b"\n", 0, error.start)  # error.object: the chunk after a split character
                return (
                    f"{path}, line {line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); is it a binary "
                    "file? Data files must be UTF-8: convert it (e.g. iconv -t utf-8) or pass the right file."
                )
            if not chunk:
                return None
            line += chunk.count(b"\n")


def _layout(
    columns: list[str], source_lang: str, target_lang: str, source_column: str | None, target_column: str | None
) -> tuple[bool, tuple[str, str]]:
    """Whether records hold a "translation" dict (nested) or flat columns, and the keys of the two sentences."""
    if source_column is None and target_column is None and TRANSLATION_COLUMN in columns:
        return True, (source_lang, target_lang)
    return False, (source_column or source_lang, target_column or target_lang)


def _example(nested: bool, keys: tuple[str, str]) -> str:
    flat = f'{{"{keys[0]}": "...", "{keys[1]}": "..."}}'
    return f'{{"{TRANSLATION_COLUMN}": {flat}}}' if nested else flat


def _record_problem(record: object, nested: bool, keys: tuple[str, str]) -> str | None:
    """What keeps one JSON record from being a sentence pair of the file's form, or None."""
    example = _example(nested, keys)
    if not isinstance(record, dict):
        return f"expected a JSON object such as {example}, found {type(record).__name__}"
    pair = record.get(TRANSLATION_COLUMN) if nested else record
    if not isinstance(pair, dict):
        return f"no {TRANSLATION_COLUMN!r} object; write the record as {example}"
    for key in keys:
        if key not in pair:
            return f"no {key!r} text: every record needs both {keys[0]!r} and {keys[1]!r}, as in {example}"
        if not isinstance(pair[key], str):
            return f"{key!r} is {json.dumps(pair[key])[:40]}, expected text (a JSON string) as in {example}"
    return None


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    """("line N", record) for each record of a JSON-lines file; ("record N", record) for a JSON list."""
    with path.open(encoding="utf-8") as handle:
        first = handle.read(1 << 16).lstrip()
        handle.seek(0)
        if first.startswith("["):
            yield from ((f"record {number}", record) for number, record in enumerate(json.load(handle), start=1))
            return
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"line {number}", json.loads(line)


def _json_record_problem(path: Path, nested: bool, keys: tuple[str, str]) -> str | None:
    """The first record of `path` that is no sentence pair of the file's form, named by its line; or the first
    two lines that show the file mixing the nested and the flat form."""
    first_of = {}  # form -> where it first appears, in the order of the file
    for where, record in _json_records(path):
        form = None
        if isinstance(record, dict):
            form = "nested" if TRANSLATION_COLUMN in record else "flat" if set(keys) & set(record) else None
        if form is not None:
            first_of.setdefault(form, where)
        if len(first_of) == 2:
            (one, one_where), (other, other_where) = first_of.items()
            return (
                f"{path} mixes two forms of record: {one_where} is {_example(one == 'nested', keys)}, {other_where} "
                f"{_example(other == 'nested', keys)}; write every line in one form."
            )
        if form in (None, "nested" if nested else "flat") and (problem := _record_problem(record, nested, keys)):
            return f"{path}, {where}: {problem}."
    return None


def _text_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _check_json_records(
    dataset: Dataset | IterableDataset, path: Path, nested: bool, keys: tuple[str, str]
) -> Dataset | IterableDataset:
    """Make sure every record of a JSON file holds text under both keys, in one form (nested or flat): any line
    may lack a key or be written in the other form, and datasets fills in nulls where it does.

    A file whose records agree in their keys loads as columns of text, whose nulls arrow counts at once; otherwise
    (keys that vary, values that are not text) the file is read record by record. A streamed file is checked as it
    is read. Keys that no record has are left to the column checks, which list the ones there are.
    """
    if isinstance(dataset, IterableDataset):

        def check(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            for position, index in enumerate(indices):
                record = {column: values[position] for column, values in batch.items()}
                if (problem := _record_problem(record, nested, keys)) is not None:
                    # The file names the line (the stream's rows may hold nulls where a key was absent).
                    raise ValueError(_json_record_problem(path, nested, keys) or f"{path}, record {index + 1}: {problem}.")
            return batch

        return dataset.map(check, batched=True, with_indices=True)
    table = dataset.data.table
    if nested:
        column = table.column(TRANSLATION_COLUMN)
        if pa.types.is_struct(column.type) and any(column.type.get_field_index(key) < 0 for key in keys):
            return dataset
        texts = [pc.struct_field(column, key) for key in keys] if pa.types.is_struct(column.type) else []
    else:
        if any(key not in table.column_names for key in keys):
            return dataset
        for key in keys:
            _check_text_column(dataset, str(path), key)  # numbers throughout: said of the column
        texts = [table.column(key) for key in keys]
    if texts and all(_text_type(text.type) for text in texts):
        absent = pc.or_(texts[0].is_null(), texts[1].is_null())
        if not pc.any(pc.or_(absent, column.is_null()) if nested else absent).as_py():
            return dataset
    problem = _json_record_problem(path, nested, keys)
    if problem is not None:
        raise ValueError(problem)
    return dataset


def _load_json(
    spec: _FileSpec, streaming: bool, cache_dir: str | None, layout: Callable[[list[str]], tuple[bool, tuple[str, str]]]
) -> Dataset | IterableDataset:
    """Load a JSON(-lines) file, checked record by record (see `_check_json_records`); `layout(columns)` says its
    form and keys."""
    path = spec.paths[0]
    # datasets logs a parse error of its own, naming no line, before it raises; the error below names the line.
    json_logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = json_logger.level
    json_logger.setLevel(logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(
            "json", data_files=str(path), split="train", streaming=streaming, cache_dir=cache_dir
        )
        if streaming:  # reading the first records now surfaces a broken file before training
            next(iter(dataset), None)
    except Exception as error:
        # Only a failed load pays for the line-by-line scans. datasets reads a large file in blocks and fails when a
        # later block's records have other keys than the first one's: a flat record among nested ones, say.
        problem = _json_problem(path, spec.split)
        if problem is None:
            columns = next((list(record) for _, record in _json_records(path) if isinstance(record, dict)), [])
            problem = _json_record_problem(path, *layout(columns))
        if problem is None and isinstance(error, datasets.exceptions.DatasetGenerationError):
            problem = f"{path}: datasets could not read it ({error.__cause__}); give every record the same keys."
        if problem is None:
            raise
        raise ValueError(problem) from error
    finally:
        json_logger.setLevel(level)
    return _check_json_records(dataset, path, *layout(_column_names(dataset)))


def _load_csv(spec: _FileSpec, streaming: bool, cache_dir: str | None) -> Dataset | IterableDataset:
    path = spec.paths[0]
    separator = _CSV_SEPARATORS[path.suffix.lower()]
    # Sentences contain quotes; in TSV they are text, not field delimiters.
    quoting = csv.QUOTE_NONE if separator == "\t" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter=separator, quoting=quoting)
        header = next(rows, None)
        if header is None or next(rows, None) is None:
            raise ValueError(
                f"The {spec.split} split is empty: {path} has no data rows. Expected a header line "
                "naming the columns, then one sentence pair per line."
            )
    try:
        return datasets.load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            streaming=streaming,
            cache_dir=cache_dir,
            sep=separator,
            quoting=quoting,
            # Read every column as text: "NA" and "1984" are sentences here, not a gap and a number.
            features=Features({column: Value("string") for column in header}),
            keep_default_na=False,
            na_filter=False,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(
            f"{path}: could not parse it as {path.suffix[1:].upper()} ({error.__cause__})."
        ) from error


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _read_text_pair(source_path: str, target_path: str, source_lang: str, target_lang: str, signature: str):
    # newline="\n": split where _count_lines counts, even if a sentence contains a bare "\r".
    with (
        open(source_path, encoding="utf-8", newline="\n") as sources,
        open(target_path, encoding="utf-8", newline="\n") as targets,
    ):
        try:
            for source, target in zip(sources, targets, strict=True):
                yield {
                    TRANSLATION_COLUMN: {source_lang: source.rstrip("\r\n"), target_lang: target.rstrip("\r\n")}
                }
        except UnicodeDecodeError as error:  # met while streaming, too late for load_parallel_data to name it
            problem = next(filter(None, map(_utf8_problem, (Path(source_path), Path(target_path)))), None)
            raise ValueError(problem or f"{source_path} or {target_path}: {error}") from error


def _load_text_pair(
    spec: _FileSpec, source_lang: str, target_lang: str, streaming: bool, cache_dir: str | None
) -> Dataset | IterableDataset:
    source_path, target_path = spec.paths
    source_lines, target_lines = _count_lines(source_path), _count_lines(target_path)
    if source_lines != target_lines:
        raise ValueError(
            f"The {spec.split} text files are not aligned: {source_path} has {source_lines} lines but "
            f"{target_path} has {target_lines}. They need one sentence per line, line i of one "
            "translating line i of the other."
        )
    if source_lines == 0:
        raise ValueError(f"The {spec.split} split is empty: {source_path} and {target_path} have no lines.")
    # The signature makes datasets' cache see an edited file, which it would not from the path
    # alone. A string, because datasets would split a list in gen_kwargs into shards.
    signature = " ".join(f"{os.stat(path).st_mtime_ns}:{os.stat(path).st_size}" for path in spec.paths)
    kwargs = {
        "source_path": str(source_path),
        "target_path": str(target_path),
        "source_lang": source_lang,
        "target_lang": target_lang,
        "signature": signature,
    }
    features = _translation_features(source_lang, target_lang)
    if streaming:
        return IterableDataset.from_generator(_read_text_pair, features=features, gen_kwargs=kwargs)
    return Dataset.from_generator(_read_text_pair, features=features, gen_kwargs=kwargs, cache_dir=cache_dir)


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)  # some streamed datasets only know their columns once read
    return list(first) if first is not None else []


def _translation_languages(dataset: Dataset | IterableDataset) -> list[str]:
    feature = (dataset.features or {}).get(TRANSLATION_COLUMN)
    if isinstance(feature, Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    first = next(iter(dataset), None)
    value = first.get(TRANSLATION_COLUMN) if first is not None else None
    return list(value) if isinstance(value, dict) else []


def _check_translation_column(
    dataset: Dataset | IterableDataset, origin: str, source_lang: str, target_lang: str
) -> None:
    columns = _column_names(dataset)
    if TRANSLATION_COLUMN not in columns:
        raise ValueError(
            f"{origin}: no '{TRANSLATION_COLUMN}' column; the columns are {columns}. Load the data "
            "with load_parallel_data or load_builtin_dataset, which give that layout."
        )
    languages = _translation_languages(dataset)
    for role, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        if lang not in languages:
            raise ValueError(
                f"{origin}: the '{TRANSLATION_COLUMN}' column has the languages {languages}, but "
                f"{role}={lang!r} is not one of them. Pass {role} from that list."
            )


def _check_text_column(dataset: Dataset | IterableDataset, origin: str, column: str) -> None:
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, Value) and feature.dtype not in ("string", "large_string", "null"):
        raise ValueError(
            f"{origin}: column '{column}' holds {feature.dtype} values, expected text. Check that "
            "the source and target columns are the right ones."
        )


def _pairs_from_columns(
    batch: dict[str, list], source_column: str, target_column: str, source_lang: str, target_lang: str
):
    return {
        TRANSLATION_COLUMN: [
            {source_lang: source, target_lang: target}
            for source, target in zip(batch[source_column], batch[target_column], strict=True)
        ]
    }


def _to_translation_layout(
    dataset: Dataset | IterableDataset,
    origin: str,
    source_lang: str,
    target_lang: str,
    source_column: str | None,
    target_column: str | None,
) -> Dataset | IterableDataset:
    """Bring a split into the {"translation": {source_lang: ..., target_lang: ...}} layout."""
    columns = _column_names(dataset)
    nested, (source_column, target_column) = _layout(columns, source_lang, target_lang, source_column, target_column)
    if nested:
        _check_translation_column(dataset, origin, source_lang, target_lang)
        return dataset.select_columns([TRANSLATION_COLUMN]) if columns != [TRANSLATION_COLUMN] else dataset
    for column in (source_column, target_column):
        if column not in columns:
            raise ValueError(
                f"{origin}: no column '{column}'; the columns are {columns}. Expected a "
                f"'{TRANSLATION_COLUMN}' column of {{language: text}} dicts, or flat text columns "
                "named by source_lang/target_lang; name other columns with source_column/target_column."
            )
        _check_text_column(dataset, origin, column)
    return dataset.map(
        _pairs_from_columns,
        batched=True,
        remove_columns=columns,
        features=_translation_features(source_lang, target_lang),
        fn_kwargs={
            "source_column": source_column,
            "target_column": target_column,
            "source_lang": source_lang,
            "target_lang": target_lang,
        },
    )


def _check_not_empty(dataset: Dataset | IterableDataset, split: str, origin: str) -> None:
    if isinstance(dataset, IterableDataset):
        empty = next(iter(dataset), None) is None
    else:
        empty = len(dataset) == 0
    if empty:
        raise ValueError(f"The {split} split is empty: {origin} holds no sentence pairs.")


def load_parallel_data(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: FileArgument | None = None,
    validation_file: FileArgument | None = None,
    test_file: FileArgument | None = None,
    source_lang: str,
    target_lang: str,
    source_column: str | None = None,
    target_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> DatasetDict | IterableDatasetDict:
    """Load a parallel corpus from the Hub (`dataset_name`) or from local files, one per split.

    A local split is a .jsonl/.json or .csv/.tsv file, or two aligned plain-text files (one sentence
    per line) given as `"train.en,train.de"` or `("train.en", "train.de")`, source first. Records
    either hold a "translation" dict or flat columns (named source_lang/target_lang unless
    `source_column`/`target_column` say otherwise). `streaming=True` reads lazily.
    """
    for name, value in (("source_lang", source_lang), ("target_lang", target_lang)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty language code such as 'en', got {value!r}.")
    if source_lang == target_lang:
        raise ValueError(f"source_lang and target_lang are both {source_lang!r}; they must differ.")
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    given = {split: value for split, value in files.items() if value is not None}
    if (dataset_name is None) == (not given):
        raise ValueError(
            "Give either dataset_name (a Hub dataset such as 'wmt14' with dataset_config_name "
            "'de-en') or local files (train_file, validation_file, test_file), "
            f"not {'both' if given else 'neither'}."
        )

    splits: dict[str, tuple[Dataset | IterableDataset, str]] = {}
    if dataset_name is not None:
        loaded = datasets.load_dataset(
            dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming
        )
        origin = f"dataset {dataset_name!r}" + (
            f" (config {dataset_config_name!r})" if dataset_config_name else ""
        )
        splits = {split: (dataset, f"{origin}, split {split!r}") for split, dataset in loaded.items()}

    def layout(columns: list[str]) -> tuple[bool, tuple[str, str]]:
        return _layout(columns, source_lang, target_lang, source_column, target_column)

    for split, value in given.items():
        spec = _file_spec(split, value)
        try:
            if len(spec.paths) == 2:
                dataset = _load_text_pair(spec, source_lang, target_lang, streaming, cache_dir)
            elif spec.paths[0].suffix.lower() in _JSON_SUFFIXES:
                dataset = _load_json(spec, streaming, cache_dir, layout)
            else:
                dataset = _load_csv(spec, streaming, cache_dir)
        except Exception as error:
            # Each reader meets a binary file in its own way, and none of their messages names the file or line;
            # only a failed load pays for this scan.
            problem = next(filter(None, map(_utf8_problem, spec.paths)), None)
            if problem is None:
                raise
            raise ValueError(problem) from error
        splits[split] = (dataset, spec.origin)

    normalised = {}
    for split, (dataset, origin) in splits.items():
        _check_not_empty(dataset, split, origin)
        normalised[split] = _to_translation_layout(
            dataset, origin, source_lang, target_lang, source_column, target_column
        )
    return IterableDatasetDict(normalised) if streaming else DatasetDict(normalised)


def load_translation_data(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: FileArgument | None = None,
    validation_file: FileArgument | None = None,
    test_file: FileArgument | None = None,
    source_lang: str | None = None,
    target_lang: str | None = None,
    source_column: str | None = None,
    target_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    builtin_seed: int = 0,
    builtin_train_size: int = 20000,
) -> tuple[DatasetDict | IterableDatasetDict, str, str]:
    """The pairs named and their two language keys: a Hub dataset or local files (`load_parallel_data`, which needs
    `source_lang` and `target_lang`), or, when none is named, the built-in task (`builtin_task.load_builtin_dataset`
    from `builtin_seed`, with `builtin_train_size` training pairs; en -> toy). The one loader of every command."""
    if dataset_name is None and train_file is None and validation_file is None and test_file is None:
        if source_lang or target_lang:
            built_in = f"{SOURCE_LANG} -> {TARGET_LANG}"
            logger.warning("No data given: the built-in task (%s) ignores source_lang and target_lang.", built_in)
        return load_builtin_dataset(seed=builtin_seed, train_size=builtin_train_size), SOURCE_LANG, TARGET_LANG
    if not (source_lang and target_lang):
        raise ValueError("Give source_lang and target_lang with your data (--source_lang en --target_lang de).")
    data = load_parallel_data(
        dataset_name=dataset_name,
        dataset_config_name=dataset_config_name,
        train_file=train_file,
        validation_file=validation_file,
        test_file=test_file,
        source_lang=source_lang,
        target_lang=target_lang,
        source_column=source_column,
        target_column=target_column,
        streaming=streaming,
        cache_dir=cache_dir,
    )
    return data, source_lang, target_lang


# ---------------------------------------------------------------------------------------------
# Tokenization and filtering
# ---------------------------------------------------------------------------------------------

# Fewer pairs a process than this and a split is tokenized in one process: starting workers costs more than it saves.
PAIRS_PER_WORKER = 50_000
_ENCODE_BATCH = 2000
_IDS = pa.list_(pa.int32())
ENCODED_FEATURES = Features(
    {
        "input_ids": datasets.List(Value("int32")),
        "attention_mask": datasets.List(Value("int8")),
        "labels": datasets.List(Value("int32")),
        "source_length": Value("int32"),
        "target_length": Value("int32"),
    }
)


@dataclass(frozen=True)
class FilterStats:
    """What `preprocess_dataset` kept and dropped in one split."""

    kept: int | None
    dropped_empty: int | None
    dropped_too_long: int | None


@dataclass
class StreamFilterStats:
    """What `preprocess_dataset` has kept and dropped of a streamed split so far: the counts grow as the process that
    reads the stream reads it (a second pass over it counts again)."""

    kept: int = 0
    dropped_empty: int = 0
    dropped_too_long: int = 0


def available_cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preprocessing_processes(num_pairs: int, num_proc: int | None) -> int | None:
    """The processes that tokenize a split of `num_pairs` pairs: `num_proc` if given, else one per core this process
    may use, as long as each gets `PAIRS_PER_WORKER` pairs. None means this process alone, as datasets.map takes it."""
    if num_proc is not None:
        check_int("num_proc", num_proc, 1)
        return num_proc if num_proc > 1 else None
    processes = min(available_cpus(), num_pairs // PAIRS_PER_WORKER)
    return processes if processes > 1 else None


@contextmanager
def _tokenizers_in_workers(processes: int | None) -> Iterator[None]:
    # The tokenizers library turns its threads off in a forked worker, with a warning from each, when the parent has
    # used them (training the BPE does). Saying so first keeps the workers quiet; they get a core each anyway.
    if not processes or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


def _side(table: pa.Table, lang: str) -> pa.ChunkedArray:
    return pc.struct_field(table.column(TRANSLATION_COLUMN), lang)


def _blank(texts: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a text is null or only whitespace."""
    return pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0), True)


def _token_ids(tokenizer, sources: list[str], targets: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """The input_ids and labels that `tokenizer(sources, text_target=targets)` gives."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        type(tokenizer) is PreTrainedTokenizerFast
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        # A plain fast tokenizer has no target mode and would call its backend just so; calling it here skips building
        # a BatchEncoding of Python lists per sentence (and the offsets of every token), half the time.
        encode = backend.encode_batch_fast
        return [e.ids for e in encode(sources)], [e.ids for e in encode(targets)]
    encoded = tokenizer(sources, text_target=targets)
    return encoded["input_ids"], encoded["labels"]


def _encode_table(table: pa.Table, tokenizer, source_lang: str, target_lang: str) -> pa.Table:
    """One batch of a loaded split (arrow) as model inputs, without the pairs that have an empty side."""
    sources, targets = _side(table, source_lang), _side(table, target_lang)
    filled = pc.invert(pc.or_(_blank(sources), _blank(targets)))
    source_ids, target_ids = _token_ids(
        tokenizer, pc.filter(sources, filled).to_pylist(), pc.filter(targets, filled).to_pylist()
    )
    input_ids, labels = pa.array(source_ids, type=_IDS), pa.array(target_ids, type=_IDS)
    source_length, target_length = pc.list_value_length(input_ids), pc.list_value_length(labels)
    ones = pa.array(np.ones(len(input_ids.values), dtype=np.int8))
    return pa.table(
        {
            "input_ids": input_ids,
            "attention_mask": pa.ListArray.from_arrays(input_ids.offsets, ones),
            "labels": labels,
            "source_length": source_length,
            "target_length": target_length,
        }
    )


def _preprocess_stream(
    dataset: IterableDataset, tokenizer, source_lang, target_lang, max_source_length, max_target_length
) -> tuple[IterableDataset, StreamFilterStats]:
    stats = StreamFilterStats()

    # A closure rather than fn_kwargs: datasets copies a stream's pipeline (split by node, shuffled sources), which
    # would copy a counter passed as an argument, and the counts would go to the copy.
    def encode(translations: list[dict]) -> dict[str, list]:
        pairs = [(pair[source_lang] or "", pair[target_lang] or "") for pair in translations]
        filled = [(source, target) for source, target in pairs if source.strip() and target.strip()]
        source_ids, target_ids = _token_ids(tokenizer, [pair[0] for pair in filled], [pair[1] for pair in filled])
        kept = [
            (source, target)
            for source, target in zip(source_ids, target_ids, strict=True)
            if len(source) <= max_source_length and len(target) <= max_target_length
        ]
        stats.dropped_empty += len(pairs) - len(filled)
        stats.dropped_too_long += len(filled) - len(kept)
        stats.kept += len(kept)
        return {
            "input_ids": [source for source, _ in kept],
            "attention_mask": [[1] * len(source) for source, _ in kept],
            "labels": [target for _, target in kept],
            "source_length": [len(source) for source, _ in kept],
            "target_length": [len(target) for _, target in kept],
        }

    encoded = dataset.map(
        encode,
        batched=True,
        batch_size=_ENCODE_BATCH,
        input_columns=TRANSLATION_COLUMN,
        remove_columns=_column_names(dataset),
        features=ENCODED_FEATURES,
    )
    return encoded, stats


def _preprocess_split(
    dataset, tokenizer, source_lang, target_lang, max_source_length, max_target_length, num_proc, desc
):
    _check_translation_column(dataset, desc or "dataset", source_lang, target_lang)
    if isinstance(dataset, IterableDataset):
        return _preprocess_stream(dataset, tokenizer, source_lang, target_lang, max_source_length, max_target_length)
    processes = preprocessing_processes(len(dataset), num_proc)
    with _tokenizers_in_workers(processes):
        # One pass, read and written as arrow, that drops the empty pairs on the way; the cache it leaves serves any
        # length limits.
        encoded = (
            dataset.select_columns([TRANSLATION_COLUMN])
            .with_format("arrow")
            .map(
                _encode_table,
                batched=True,
                batch_size=_ENCODE_BATCH,
                remove_columns=[TRANSLATION_COLUMN],
                features=ENCODED_FEATURES,
                fn_kwargs={"tokenizer": tokenizer, "source_lang": source_lang, "target_lang": target_lang},
                num_proc=processes,
                desc=f"{desc}: tokenizing" if desc else "tokenizing",
            )
        )
    lengths = encoded.select_columns(["source_length", "target_length"]).with_format("arrow")[:]
    fits = (lengths.column("source_length").to_numpy() <= max_source_length) & (
        lengths.column("target_length").to_numpy() <= max_target_length
    )
    kept = encoded if fits.all() else encoded.select(np.flatnonzero(fits))
    kept = kept.with_format(dataset.format["type"], **dataset.format["format_kwargs"])
    stats = FilterStats(len(kept), len(dataset) - len(encoded), len(encoded) - len(kept))
    logger.info(
        "%s: kept %d pairs, dropped %d empty and %d longer than %d source / %d target tokens.",
        desc or "dataset",
        stats.kept,
        stats.dropped_empty,
        stats.dropped_too_long,
        max_source_length,
        max_target_length,
    )
    return kept, stats


def longest_source(dataset: Dataset) -> int:
    """The most tokens of any source in a split `preprocess_dataset` made (0 when empty), counted by arrow."""
    return pc.max(dataset.with_format("arrow")["source_length"]).as_py() or 0


def preprocess_dataset(
    dataset: Dataset | DatasetDict | IterableDataset | IterableDatasetDict,
    tokenizer,
    source_lang: str,
    target_lang: str,
    max_source_length: int,
    max_target_length: int,
    num_proc: int | None = None,
    desc: str | None = None,
):
    """Tokenize translation pairs into input_ids, attention_mask, labels, source_length, target_length.

    Pairs with an empty side are dropped, and so are pairs longer than the limits (counted in tokens, `</s>`
    included) rather than truncated. A loaded split is tokenized in `num_proc` processes (default: one per core
    for a large split, see `preprocessing_processes`) and its counts are `FilterStats`; a streamed split is
    tokenized lazily as it is read, and its `StreamFilterStats` count as it goes. Returns the dataset and its stats
    (a dict of them per split for a dict of splits).
    """
    check_int("max_source_length", max_source_length, 1)
    check_int("max_target_length", max_target_length, 1)
    arguments = (tokenizer, source_lang, target_lang, max_source_length, max_target_length, num_proc)
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        results = {
            split: _preprocess_split(part, *arguments, f"{desc} {split}" if desc else split)
            for split, part in dataset.items()
        }
        processed = type(dataset)({split: result[0] for split, result in results.items()})
        return processed, {split: result[1] for split, result in results.items()}
    if isinstance(dataset, (Dataset, IterableDataset)):
        return _preprocess_split(dataset, *arguments, desc)
    raise TypeError(
        f"dataset must be a datasets Dataset, DatasetDict, IterableDataset or IterableDatasetDict, "
        f"got {type(dataset).__name__}."
    )


def tokenizer_training_texts(
    split: Dataset | IterableDataset,
    source_lang: str,
    target_lang: str,
    max_pairs: int | None,
    seed: int = 0,
    batch_size: int = 10_000,
) -> Iterator[str]:
    """Both sides of at most `max_pairs` pairs of a split, for `train_bpe_tokenizer`: pairs drawn at random from a
    loaded split, read in arrow batches, or the first pairs of a stream (all a stream can give before training
    starts), in batches. Empty texts are left out."""
    if max_pairs is not None:
        check_int("max_pairs", max_pairs, 1)
    _check_translation_column(split, "the tokenizer's training split", source_lang, target_lang)
    if isinstance(split, IterableDataset):
        # Python batches: a stream's checks run in Python, and arrow batches would be built again from them.
        for batch in (split.take(max_pairs) if max_pairs is not None else split).iter(batch_size=batch_size):
            for lang in (source_lang, target_lang):
                yield from filter(None, (pair[lang] for pair in batch[TRANSLATION_COLUMN]))
        return
    if max_pairs is not None and len(split) > max_pairs:
        chosen = np.random.default_rng(seed).choice(len(split), size=max_pairs, replace=False)
        split = split.select(np.sort(chosen))  # in the order of the file: read, not sought
    for table in split.select_columns([TRANSLATION_COLUMN]).with_format("arrow").iter(batch_size=batch_size):
        for lang in (source_lang, target_lang):
            yield from filter(None, _side(table, lang).to_pylist())


def _every_nth(_, index: int, rank: int, world_size: int) -> bool:
    return index % world_size == rank


def stream_share(stream: IterableDataset, rank: int, world_size: int) -> IterableDataset:
    """Process `rank`'s share of a stream read by `world_size` processes, to take before tokenizing so that each
    process tokenizes only its own pairs: whole shards when they divide evenly among the processes
    (datasets' `split_dataset_by_node`), else every `world_size`-th pair. The shares are disjoint and cover the
    stream."""
    check_int("world_size", world_size, 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank} and world_size={world_size}.")
    if world_size == 1:
        return stream
    if stream.num_shards % world_size == 0:
        return split_dataset_by_node(stream, rank, world_size)
    # datasets would take every n-th pair after the whole pipeline, tokenizing in every process all of them.
    return stream.filter(_every_nth, with_indices=True, fn_kwargs={"rank": rank, "world_size": world_size})
