"""A parallel corpus of any size from the gettext catalogues (.mo) of a Debian machine, for the scale benchmark.

The catalogues hold human translations of program messages (Spanish about 41.8k pairs with English, French about
47.9k). A corpus of N pairs takes them in a seeded random order and, past the first round, makes each line distinct
by a round number on both sides ("Open file (2)" -> "Abrir archivo (2)"): the text stays real, and no line repeats.

    python benchmarks/build_corpus.py /tmp/corpus-1M.jsonl --lang es --pairs 1000000

Each line is {"translation": {LANG: ..., "en": ...}}, what `hf-vanilla-train --train_file` reads.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import struct
from collections.abc import Iterator
from pathlib import Path

LOCALE_ROOT = Path("/usr/share/locale")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


def read_mo(path: Path) -> Iterator[tuple[str, str]]:
    """(message, translation) of one compiled catalogue, in the GNU .mo layout: a header of 32-bit words (magic,
    revision, count, offset of the originals' table, offset of the translations' table), then per table (length,
    offset) pairs."""
    data = path.read_bytes()
    if len(data) < 20:
        return
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        return
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    for index in range(count):
        length, offset = struct.unpack(order + "2I", data[originals + 8 * index : originals + 8 * index + 8])
        t_length, t_offset = struct.unpack(order + "2I", data[translations + 8 * index : translations + 8 * index + 8])
        try:
            yield data[offset : offset + length].decode("utf-8"), data[t_offset : t_offset + t_length].decode("utf-8")
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


def write_corpus(path: Path, lang: str, size: int, seed: int = 0, locale_root: Path = LOCALE_ROOT) -> Path:
    pairs = catalogue_pairs(lang, locale_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for english, foreign in corpus(pairs, size, seed):
            handle.write(json.dumps({"translation": {lang: foreign, "en": english}}, ensure_ascii=False) + "\n")
    partial.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the .jsonl file to write")
    parser.add_argument("--lang", default="es", help="the catalogues' language, paired with English")
    parser.add_argument("--pairs", type=int, required=True, help="how many pairs to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--locale_root", type=Path, default=LOCALE_ROOT)
    args = parser.parse_args()
    write_corpus(args.output, args.lang, args.pairs, args.seed, args.locale_root)
    print(f"{args.pairs} pairs ({args.lang}-en) in {args.output}")


if __name__ == "__main__":
    main()
