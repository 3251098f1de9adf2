"""Draw what a trained model does with one sentence: attention maps, positional encodings, training curves.

    hf-vanilla-visualize outputs/vanilla-builtin "the two old farmers see a red boat near the river" --output_dir viz
    hf-vanilla-visualize outputs/vanilla-builtin "every clever fox reads my book" --output_dir viz --layer 0 --head 2

The sentence is translated (the model's generation_config decides the decoding unless --num_beams is given),
then the model runs once more on the sentence and its translation with the eager attention kernel, which
returns the weights of every head. Written to --output_dir:

    {encoder_self_attention,decoder_self_attention,cross_attention}_layerL_headH.png   one head
    {encoder_self_attention,decoder_self_attention,cross_attention}_layerL_all_heads.png   all heads of layer L
    cross_attention_alignment.png   cross-attention of the last decoder layer, averaged over its heads
    positional_encoding.png         the position table (position x dimension) and PE(p)·PE(q) against |p - q|
    training_curves.png             from trainer_state.json (found in the model folder or its newest checkpoint,
                                    or given with --trainer_state); skipped when there is none
    report.html                     the sentence, its translation and tokens, and all the figures

Needs matplotlib: pip install 'hf-vanilla-transformer[viz]'.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hf_vanilla_transformer.cli._errors import ArgumentParser, at_least, console_script
from hf_vanilla_transformer.model_source import check_model_folder

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="hf-vanilla-visualize", description=__doc__)
    parser.add_argument("model", metavar="MODEL_FOLDER", help="A trained model folder (from hf-vanilla-train).")
    parser.add_argument("sentence", help="The source sentence to translate and look inside (quote it).")
    parser.add_argument("--output_dir", required=True, help="Folder for the PNG figures and report.html.")
    parser.add_argument(
        "--layer", type=int, default=-1,
        help="Layer for the heatmaps, 0-based; negative counts from the last (default: -1, the last layer).",
    )
    parser.add_argument("--head", type=int, default=0, help="Head for the single-head heatmaps, 0-based (default: 0).")
    parser.add_argument(
        "--trainer_state",
        help="trainer_state.json (or a run folder holding one) for the training curves "
        "(default: look in MODEL_FOLDER and its newest checkpoint-N/).",
    )
    parser.add_argument("--target", help="Look at this target instead of the model's own translation.")
    parser.add_argument(
        "--num_beams", type=at_least(1), help="Beam size for the translation; 1 is greedy (default: the model's)."
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available).")
    return parser


def _default_trainer_state(folder: Path) -> Path | None:
    """The model folder when it (or its newest checkpoint) has a usable trainer_state.json, else None."""
    from hf_vanilla_transformer import visualization

    try:
        visualization.load_log_history(folder)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("No training curves: %s", error)
        return None
    return folder


def run(argv: list[str] | None = None) -> dict[str, Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        folder = check_model_folder(args.model)
    except OSError as error:
        parser.error(f"MODEL_FOLDER: {error}")
    if not args.sentence.strip():
        parser.error("the sentence is empty.")
    # Imported here so that --help and argument errors do not wait for torch and transformers.
    from hf_vanilla_transformer import visualization

    visualization.require_matplotlib()  # an ImportError that says what to install
    if args.trainer_state is not None:
        try:
            visualization.load_log_history(args.trainer_state)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--trainer_state: {error}")
        trainer_state = Path(args.trainer_state)
    else:
        trainer_state = _default_trainer_state(folder)

    model, tokenizer = visualization.load_model(folder, device=args.device)
    try:
        visualization.check_layer_and_head(model.config, args.layer, args.head)
    except ValueError as error:
        parser.error(f"--{str(error)}")
    generate_kwargs = {"num_beams": args.num_beams} if args.num_beams is not None else {}
    paths = visualization.visualize(
        model, tokenizer, args.sentence, args.output_dir, layer=args.layer, head=args.head,
        trainer_state=trainer_state, target=args.target, **generate_kwargs,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


main = console_script(run)


if __name__ == "__main__":
    main()
