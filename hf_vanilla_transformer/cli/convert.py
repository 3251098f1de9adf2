"""Convert a pretrained model of another class into this package's model, with the same outputs: Marian (Opus-MT).

    hf-vanilla-convert --from marian Helsinki-NLP/opus-mt-de-en outputs/opus-mt-de-en
    hf-vanilla-convert --from marian path/to/marian-folder outputs/converted

The output folder holds the converted model, its generation config and the Marian tokenizer (SentencePiece, so
`pip install sentencepiece`; a source without a tokenizer converts with a warning). It is written beside OUTPUT_DIR
and renamed into place, so a failure never leaves a half-written folder. Fine-tune it with
`hf-vanilla-train --model_name_or_path OUTPUT_DIR`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hf_vanilla_transformer._io import check_free, staged_folder
from hf_vanilla_transformer.cli._errors import ArgumentParser, console_script
from hf_vanilla_transformer.model_source import check_model_source

logger = logging.getLogger("hf_vanilla_transformer.convert")


def convert(source: str, output_dir: str) -> Path:
    """Marian model (folder or Hub id) -> our model folder, with Marian's tokenizer when the source has one."""
    from transformers import AutoTokenizer

    from hf_vanilla_transformer.convert_marian import from_marian

    output = Path(output_dir)
    check_free(output)  # before the conversion, and again before the rename
    model = from_marian(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, ImportError) as error:  # no tokenizer files, or no sentencepiece
        tokenizer = None
        logger.warning("No tokenizer saved with the model (%s): %s", source, str(error).splitlines()[0])
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return output


def run(argv: list[str] | None = None) -> Path:
    parser = ArgumentParser(prog="hf-vanilla-convert", description=__doc__)
    parser.add_argument("--from", dest="kind", required=True, choices=("marian",), help="The source model's class.")
    parser.add_argument("source", help="The model to convert: a folder or a Hub id.")
    parser.add_argument("output_dir", help="Where to write the converted model (must not exist or be empty).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    check_model_source(args.source, needs_tokenizer=False)  # a mistyped folder fails now, not after Hub retries
    output = convert(args.source, args.output_dir)
    print(f"Converted model written to {output}")
    return output


main = console_script(run)


if __name__ == "__main__":
    main()
