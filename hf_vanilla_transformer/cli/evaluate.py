r"""Score a trained model on a test set with sacreBLEU and chrF (signatures printed, so scores compare).

    hf-vanilla-evaluate outputs/vanilla-builtin                       # the built-in task's test split
    hf-vanilla-evaluate my-model --test_file test.de-en.jsonl --source_lang de --target_lang en
    hf-vanilla-evaluate my-model --dataset_name wmt14 --dataset_config_name de-en \
        --source_lang en --target_lang de --split test

Writes the scores as JSON to --output_file when given.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hf_vanilla_transformer.cli._data import load_data
from hf_vanilla_transformer.cli._errors import ArgumentParser, at_least, console_script
from hf_vanilla_transformer.cli.translate import add_generation_arguments, generation_kwargs, translate_checked


def load_test_pairs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    data, source_lang, target_lang = load_data(args)
    if args.split not in data:
        raise ValueError(f"The data has no split {args.split!r}; it has {sorted(data)}.")
    pairs = data[args.split]["translation"]
    if args.max_samples is not None:
        pairs = pairs[: args.max_samples]
    return [p[source_lang] for p in pairs], [p[target_lang] for p in pairs]


def run(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="hf-vanilla-evaluate", description=__doc__)
    parser.add_argument("model", help="Trained model folder or Hub id (namespace/name).")
    data = parser.add_argument_group("test data (default: the built-in task)")
    data.add_argument("--test_file", help="Local .jsonl/.csv/.tsv file or 'test.en,test.de' aligned text files.")
    data.add_argument("--dataset_name", help="Hub dataset, e.g. wmt14.")
    data.add_argument("--dataset_config_name", help="Its configuration, e.g. de-en.")
    data.add_argument("--split", default="test", help="Split to score (default: test).")
    data.add_argument("--source_lang")
    data.add_argument("--target_lang")
    data.add_argument("--source_column")
    data.add_argument("--target_column")
    data.add_argument("--builtin_seed", type=int, default=0, help="Seed of the built-in task.")
    data.add_argument("--max_samples", type=at_least(1), help="Score only the first N pairs.")
    parser.add_argument("--output_file", help="Write the scores here as JSON.")
    add_generation_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    kwargs = generation_kwargs(args)
    from hf_vanilla_transformer.training import translation_scores
    from hf_vanilla_transformer.translation import load_translation_model

    model, tokenizer = load_translation_model(args.model, device=args.device, quantize=args.quantize)
    sources, references = load_test_pairs(args)
    hypotheses = translate_checked(model, tokenizer, sources, batch_size=args.batch_size, progress=True, **kwargs)
    scores = translation_scores(hypotheses, references)
    scores["samples"] = len(references)
    print(f"BLEU = {scores['bleu']:.2f}  chrF = {scores['chrf']:.2f}  exact match = {scores['exact_match']:.2f}%  ({len(references)} sentences)")
    print(f"BLEU signature: {scores['bleu_signature']}")
    print(f"chrF signature: {scores['chrf_signature']}")
    if args.output_file:
        Path(args.output_file).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


main = console_script(run)


if __name__ == "__main__":
    main()
