"""Export a trained model folder (or Hub id) for an inference engine: CTranslate2.

    hf-vanilla-export outputs/vanilla-builtin outputs/vanilla-ct2 --to ctranslate2
    hf-vanilla-export outputs/vanilla-builtin outputs/vanilla-ct2-int8 --to ctranslate2 --quantization int8

The output folder loads with `ctranslate2.Translator(OUTPUT_DIR)` and holds the model's tokenizer. It is written
beside OUTPUT_DIR and renamed into place, so a failure never leaves a half-written folder. Needs
`pip install "hf-vanilla-transformer[ctranslate2]"`. A configuration CTranslate2 cannot express (d_k != d_v) is
refused with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hf_vanilla_transformer.cli._errors import ArgumentParser, console_script
from hf_vanilla_transformer.ctranslate2_export import QUANTIZATIONS
from hf_vanilla_transformer.model_source import check_model_source


def run(argv: list[str] | None = None) -> Path:
    parser = ArgumentParser(prog="hf-vanilla-export", description=__doc__)
    parser.add_argument("model", help="Trained model folder or Hub id.")
    parser.add_argument("output_dir", help="Where to write the exported model (must not exist or be empty).")
    parser.add_argument("--to", required=True, choices=("ctranslate2",), help="The format to export to.")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, help="CTranslate2 weight type (default: float32 weights)."
    )
    parser.add_argument(
        "--max_positions", type=int,
        help="Rows of the position table written for sinusoidal positions (default: the larger of "
        "max_position_embeddings and 1024); CTranslate2 refuses longer inputs and outputs.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    check_model_source(args.model)  # a mistyped folder fails now, not after Hub retries
    from hf_vanilla_transformer.ctranslate2_export import export_ctranslate2

    output = export_ctranslate2(args.model, args.output_dir, quantization=args.quantization, max_positions=args.max_positions)
    print(f"CTranslate2 model written to {output}")
    return output


main = console_script(run)


if __name__ == "__main__":
    main()
