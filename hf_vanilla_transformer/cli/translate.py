"""Translate sentences with a trained model folder (or Hub id).

    hf-vanilla-translate outputs/vanilla-builtin "the old farmer sees a red boat"
    hf-vanilla-translate outputs/vanilla-builtin --file sentences.txt --num_beams 1 > out.txt
    echo "every forest runs" | hf-vanilla-translate outputs/vanilla-builtin

Sentences come from the arguments, else from --file, else from standard input, one per line; the
translations go to standard output, one per line in the same order (alternatives from
--num_return_sequences separated by tabs). Decoding defaults come from the
model's generation_config (the training code saves the paper's beam 4, length penalty 0.6).

Nothing is truncated, and nothing is dropped without a word: an empty sentence gives an empty line and a
warning; a translation that stopped at the output length limit (input length + 50 tokens, or --max_new_tokens)
is named in a warning; a sentence longer than a model with learned positions can serve is refused. A mistake
(a folder that does not exist, a bad option value) ends in one line, "error: ...", exit status 2; --debug
shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hf_vanilla_transformer.cli._errors import ArgumentParser, at_least, console_script, in_range


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (default: the model's generation_config)")
    group.add_argument("--num_beams", type=at_least(1), help="Beam size; 1 is greedy.")
    group.add_argument("--length_penalty", type=float, help="Beam length penalty alpha (paper: 0.6).")
    group.add_argument("--max_new_tokens", type=at_least(1), help="Output length limit (default: input length + 50).")
    group.add_argument("--do_sample", action="store_true", help="Sample instead of searching.")
    group.add_argument("--top_k", type=at_least(0), help="Sample from the k most likely tokens (0: all).")
    group.add_argument(
        "--top_p", type=in_range(0, 1), help="Sample from the smallest set with this much probability, in (0, 1]."
    )
    group.add_argument(
        "--temperature", type=in_range(0, float("inf"), high_open=True), help="Softmax temperature for sampling, > 0."
    )
    group.add_argument("--num_return_sequences", type=at_least(1), help="Translations per sentence (<= num_beams).")
    group.add_argument("--seed", type=int, help="Seed for sampling.")
    group.add_argument("--batch_size", type=at_least(1), default=32, help="Sentences per generate() call.")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available).")
    group.add_argument(
        "--quantize", choices=("int8",), help="int8 linear layers: faster CPU decoding, slightly different output."
    )


def generation_kwargs(args: argparse.Namespace) -> dict:
    """The decoding options given, for generate(); what can be checked without the model is checked here."""
    names = ("num_beams", "length_penalty", "max_new_tokens", "top_k", "top_p", "temperature", "num_return_sequences")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.do_sample:
        kwargs["do_sample"] = True
    beams, sequences = kwargs.get("num_beams"), kwargs.get("num_return_sequences")
    if beams is not None and sequences is not None and sequences > beams and not args.do_sample:
        raise ValueError(f"--num_return_sequences {sequences} needs at least as many beams (--num_beams {beams}).")
    if args.device is not None:
        from hf_vanilla_transformer.translation import check_device

        check_device(args.device)
    return kwargs


def translate_checked(model, tokenizer, sentences: list[str], **kwargs) -> list:
    """`translate()`, saying what the translations alone would not: empty sentences are not translated (an empty
    translation, with a warning), a sentence longer than a model with learned positions serves is refused
    (ValueError), and a translation that stopped at the output length limit is named in a warning."""
    from hf_vanilla_transformer.translation import OutputLimitWatch, check_sentences, translate, warn_cut

    keep = check_sentences(model, tokenizer, sentences, max_new_tokens=kwargs.get("max_new_tokens"))
    with OutputLimitWatch(model) as watch:
        done = translate(model, tokenizer, [sentences[i] for i in keep], **kwargs) if keep else []
    warn_cut(watch.cut(tokenizer, sentences, keep), kwargs.get("max_new_tokens"), model.generation_config)
    alternatives = kwargs.get("num_return_sequences") or 1
    results: list = ["" if alternatives == 1 else [""] * alternatives] * len(sentences)
    for i, translation in zip(keep, done):
        results[i] = translation
    return results


def read_sentences(args: argparse.Namespace) -> list[str]:
    if args.sentences:
        return args.sentences
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    else:
        if sys.stdin.isatty():
            print("Type sentences, one per line; end with Ctrl-D.", file=sys.stderr)
        lines = sys.stdin.read().splitlines()
    return [line.strip() for line in lines]


def run(argv: list[str] | None = None) -> list[str]:
    parser = ArgumentParser(prog="hf-vanilla-translate", description=__doc__)
    parser.add_argument("model", help="Trained model folder or Hub id (namespace/name).")
    parser.add_argument("sentences", nargs="*", help="Sentences to translate.")
    parser.add_argument("--file", help="Read sentences from this file, one per line.")
    add_generation_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    kwargs = generation_kwargs(args)
    if args.sentences and args.file:
        raise ValueError("Give the sentences as arguments or with --file, not both.")
    if args.file and not Path(args.file).is_file():
        raise FileNotFoundError(f"--file {args.file} does not exist or is not a file.")
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    from hf_vanilla_transformer.translation import load_translation_model

    model, tokenizer = load_translation_model(args.model, device=args.device, quantize=args.quantize)
    sentences = read_sentences(args)
    if not sentences:
        raise ValueError("No sentences to translate (give them as arguments, with --file, or on stdin).")
    progress = len(sentences) > args.batch_size
    translations = translate_checked(
        model, tokenizer, sentences, batch_size=args.batch_size, progress=progress, **kwargs
    )
    for line in translations:
        print(line if isinstance(line, str) else "\t".join(line))
    return translations


main = console_script(run)


if __name__ == "__main__":
    main()
