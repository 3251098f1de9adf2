"""Translate sentences with a trained model folder (or Hub id).

    hf-vanilla-translate outputs/vanilla-builtin "the old farmer sees a red boat"
    hf-vanilla-translate outputs/vanilla-builtin --file sentences.txt --num_beams 1 > out.txt
    echo "every forest runs" | hf-vanilla-translate outputs/vanilla-builtin

Sentences come from the arguments, else from --file, else from standard input, one per line; the
translations go to standard output, one per line in the same order (alternatives from
--num_return_sequences separated by tabs). Decoding defaults come from the
model's generation_config (the training code saves the paper's beam 4, length penalty 0.6).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hf_vanilla_transformer.translation import load_translation_model, translate


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (default: the model's generation_config)")
    group.add_argument("--num_beams", type=int, help="Beam size; 1 is greedy.")
    group.add_argument("--length_penalty", type=float, help="Beam length penalty alpha (paper: 0.6).")
    group.add_argument("--max_new_tokens", type=int, help="Output length limit (default: input length + 50).")
    group.add_argument("--do_sample", action="store_true", help="Sample instead of searching.")
    group.add_argument("--top_k", type=int, help="Sample from the k most likely tokens.")
    group.add_argument("--top_p", type=float, help="Sample from the smallest set with this much probability.")
    group.add_argument("--temperature", type=float, help="Softmax temperature for sampling.")
    group.add_argument("--num_return_sequences", type=int, help="Translations per sentence (<= num_beams).")
    group.add_argument("--seed", type=int, help="Seed for sampling.")
    group.add_argument("--batch_size", type=int, default=32, help="Sentences per generate() call.")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available).")
    group.add_argument(
        "--quantize", choices=("int8",), help="int8 linear layers: faster CPU decoding, slightly different output."
    )


def generation_kwargs(args: argparse.Namespace) -> dict:
    names = ("num_beams", "length_penalty", "max_new_tokens", "top_k", "top_p", "temperature", "num_return_sequences")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.do_sample:
        kwargs["do_sample"] = True
    return kwargs


def read_sentences(args: argparse.Namespace) -> list[str]:
    if args.sentences:
        return args.sentences
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise SystemExit(f"error: --file {path} does not exist.")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        if sys.stdin.isatty():
            print("Type sentences, one per line; end with Ctrl-D.", file=sys.stderr)
        lines = sys.stdin.read().splitlines()
    return [line.strip() for line in lines]


def run(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Trained model folder or Hub id.")
    parser.add_argument("sentences", nargs="*", help="Sentences to translate.")
    parser.add_argument("--file", help="Read sentences from this file, one per line.")
    add_generation_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    sentences = read_sentences(args)
    if not sentences:
        raise SystemExit("error: no sentences to translate (give them as arguments, with --file, or on stdin).")
    model, tokenizer = load_translation_model(args.model, device=args.device, quantize=args.quantize)
    kwargs = generation_kwargs(args)
    translations = translate(model, tokenizer, sentences, batch_size=args.batch_size, progress=len(sentences) > args.batch_size, **kwargs)
    for line in translations:
        print(line if isinstance(line, str) else "\t".join(line))
    return translations


def main(argv: list[str] | None = None) -> None:
    """The console script: `run`, returning nothing, so that the exit status is 0 on success."""
    run(argv)


if __name__ == "__main__":
    main()
