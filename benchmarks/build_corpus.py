"""Parallel corpora from the gettext catalogues (.mo) of a Debian machine: real human translations of program
messages, paired with their English originals (Spanish about 41.8k pairs, French about 47.9k).

Two shapes, one per benchmark:

    python benchmarks/build_corpus.py /tmp/corpus-fr --lang fr                            # bench_quality.py
    python benchmarks/build_corpus.py /tmp/corpus-1M.jsonl --lang es --pairs 1000000      # bench_scale.py

Without --pairs, every pair once, split into OUTPUT/train.jsonl and OUTPUT/test.jsonl: a pair is in the test split
when a hash of its English side says so (about 2%), so a pair's split depends neither on the other pairs nor on
the order the catalogues are read in. With --pairs N, one file of N pairs: the catalogue pairs in a seeded random order,
and past the first round each line made distinct by a round number on both sides ("Open file (2)" -> "Abrir archivo
(2)"), so the text stays real and no line repeats.

Each line is {"translation": {LANG: ..., "en": ...}}, what `hf-vanilla-train --train_file` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import struct
from collections.abc import Iterator
from pathlib import Path

LOCALE_ROOT = Path("/usr/share/locale")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
_CHARSET = re.compile(r"charset=([A-Za-z0-9_.:-]+)")


def read_mo(path: Path) -> Iterator[tuple[str, str]]:
    """(message, translation) of one compiled catalogue, in the GNU .mo layout: a header of 32-bit words (magic,
    revision, count, offset of the originals' table, offset of the translations' table), then per table (length,
    offset) pairs. The strings are decoded with the charset the catalogue's header names (UTF-8 if none)."""
    data = path.read_bytes()
    if len(data) < 20:
        return
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        return
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, index: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * index : table + 8 * index + 8])
        return data[offset : offset + length]

    entries = [(string(originals, index), string(translations, index)) for index in range(count)]
    header = next((translation for message, translation in entries if not message), b"")
    charset = _CHARSET.search(header.decode("ascii", errors="replace"))
    encoding = charset.group(1) if charset else "utf-8"
    try:
        "".encode(encoding)
    except LookupError:  # a charset Python does not know: UTF-8, and lines that do not decode are left out
        encoding = "utf-8"
    for message, translation in entries:
        try:
            yield message.decode(encoding), translation.decode(encoding)
        except UnicodeDecodeError:
            continue


def catalogue_pairs(lang: str, locale_root: Path = LOCALE_ROOT, max_words: int = 40) -> list[tuple[str, str]]:
    """Distinct (English, LANG) pairs of every catalogue of `lang`, sorted: messages of 2 to `max_words` words with a
    translation that differs, without plural forms, the catalogue header or control characters."""
    pairs: dict[str, str] = {}
    for path in sorted((locale_root / lang / "LC_MESSAGES").glob("*.mo")):
        for message, translation in read_mo(path):
            if not message or "\x00" in message or "\x00" in translation:  # the header, plural forms
                continue
            english, foreign = " ".join(message.split()), " ".join(translation.split())
            if not foreign or english == foreign or _CONTROL.search(english + foreign):
                continue
            if 2 <= len(english.split()) <= max_words and len(foreign.split()) <= 1.5 * max_words:
                pairs.setdefault(english, foreign)
    if not pairs:
        raise SystemExit(f"No catalogues for {lang!r} under {locale_root}: install its language packs or pick another.")
    return sorted(pairs.items())


def corpus(pairs: list[tuple[str, str]], size: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """`size` distinct pairs: the catalogue pairs in a new order each round, numbered from the second round on."""
    rng = random.Random(seed)
    made = 0
    for round_number in range(1, size // len(pairs) + 2):
        order = list(pairs)
        rng.shuffle(order)
        suffix = f" ({round_number})" if round_number > 1 else ""
        for english, foreign in order[: size - made]:
            yield english + suffix, foreign + suffix
        made += min(len(order), size - made)
        if made == size:
            return


def in_test_split(english: str, test_percent: int = 2) -> bool:
    """Whether a pair belongs to the test split: decided by its English side alone, the same on every machine."""
    return int(hashlib.sha1(english.encode("utf-8")).hexdigest(), 16) % 100 < test_percent


def _write_lines(path: Path, lang: str, pairs) -> None:
    """One JSON line a pair, written beside the file and renamed into place, so a file that exists is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for english, foreign in pairs:
            handle.write(json.dumps({"translation": {lang: foreign, "en": english}}, ensure_ascii=False) + "\n")
    partial.rename(path)


def write_corpus(path: Path, lang: str, size: int, seed: int = 0, locale_root: Path = LOCALE_ROOT) -> Path:
    """One .jsonl file of `size` distinct pairs (see `corpus`)."""
    _write_lines(path, lang, corpus(catalogue_pairs(lang, locale_root), size, seed))
    return path


def write_split_corpus(
    folder: Path, lang: str, locale_root: Path = LOCALE_ROOT, test_percent: int = 2
) -> tuple[int, int]:
    """Every catalogue pair once, in `folder`/train.jsonl and `folder`/test.jsonl; returns the two counts."""
    pairs = catalogue_pairs(lang, locale_root)
    test = [pair for pair in pairs if in_test_split(pair[0], test_percent)]
    train = [pair for pair in pairs if not in_test_split(pair[0], test_percent)]
    if not test or not train:
        raise SystemExit(
            f"{len(pairs)} pairs for {lang!r} give {len(train)} to train and {len(test)} to test: too few for a "
            "split; install more of its language packs or pick another language."
        )
    _write_lines(folder / "train.jsonl", lang, train)
    _write_lines(folder / "test.jsonl", lang, test)
    return len(train), len(test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a folder (train.jsonl, test.jsonl), or with --pairs the .jsonl file")
    parser.add_argument("--lang", default="es", help="the catalogues' language, paired with English")
    parser.add_argument("--pairs", type=int, default=None, help="one file of this many pairs instead of a split")
    parser.add_argument("--seed", type=int, default=0, help="the order of the pairs, with --pairs")
    parser.add_argument("--test_percent", type=int, default=2, help="the test split's share, without --pairs")
    parser.add_argument("--locale_root", type=Path, default=LOCALE_ROOT)
    args = parser.parse_args(argv)
    if args.pairs is not None:
        if args.pairs < 1:
            parser.error(f"--pairs must be at least 1, got {args.pairs}")
        write_corpus(args.output, args.lang, args.pairs, args.seed, args.locale_root)
        print(f"{args.pairs} pairs ({args.lang}-en) in {args.output}")
        return
    if not 0 < args.test_percent < 100:
        parser.error(f"--test_percent must be between 1 and 99, got {args.test_percent}")
    train, test = write_split_corpus(args.output, args.lang, args.locale_root, args.test_percent)
    print(f"{train + test} pairs ({args.lang}-en) in {args.output}: train.jsonl {train}, test.jsonl {test}")


if __name__ == "__main__":
    main()
