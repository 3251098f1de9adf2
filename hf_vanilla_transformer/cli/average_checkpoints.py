"""Average the weights of a run's last N checkpoints into one model folder (§6.1: the paper averaged the
last 5 checkpoints of the base model and the last 20 of the big one).

    hf-vanilla-average outputs/my-run --last 5 --output_dir outputs/my-run-avg5

The result is a complete, Hub-ready folder: weights (safetensors), config with its code, tokenizer and
generation config, copied from the newest checkpoint (or from the run folder). It is written to a
staging folder and renamed into place, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from hf_vanilla_transformer._io import check_free, staged_folder
from hf_vanilla_transformer.cli._errors import ArgumentParser, at_least, console_script

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("hf_vanilla_transformer.average")

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint-N folders, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"Run folder {run} does not exist.")
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no .safetensors weights (was it written by an old version or torch.save?).")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def average_state_dicts(checkpoints: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the checkpoints' floating-point tensors, accumulated in float64."""
    import torch
    from tqdm.auto import tqdm

    total: dict[str, torch.Tensor] | None = None
    for checkpoint in tqdm(checkpoints, desc="Averaging", unit="checkpoint"):
        state = _weights(checkpoint)
        if total is None:
            total = {k: v.to(torch.float64) if v.is_floating_point() else v.clone() for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
            continue
        if state.keys() != total.keys():
            diff = sorted(state.keys() ^ total.keys())[:5]
            raise ValueError(f"{checkpoint} has different tensors from the first checkpoint (e.g. {diff}); they are not one run.")
        for key, value in state.items():
            if value.shape != total[key].shape:
                raise ValueError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, the first checkpoint {tuple(total[key].shape)}.")
            if value.is_floating_point():
                total[key] += value.to(torch.float64)
    return {k: (v / len(checkpoints)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}


def average_checkpoints(run_dir: str, last: int, output_dir: str) -> Path:
    """Average the last `last` checkpoints of `run_dir` and save a model folder at `output_dir`."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)

    if last < 1:
        raise ValueError(f"--last must be at least 1, got {last}.")
    output = Path(output_dir)
    check_free(output, "choose a new --output_dir")  # and again before the rename
    checkpoints = list_checkpoints(run_dir)
    if len(checkpoints) < last:
        raise ValueError(f"{run_dir} has {len(checkpoints)} checkpoints ({[c.name for c in checkpoints]}); cannot average the last {last}.")
    chosen = checkpoints[-last:]
    logger.info("Averaging %s", ", ".join(c.name for c in chosen))
    newest = chosen[-1]
    model = AutoModelForSeq2SeqLM.from_pretrained(newest)
    averaged = average_state_dicts(chosen)
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    tied = set(model.all_tied_weights_keys) if hasattr(model, "all_tied_weights_keys") else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"The averaged weights do not fit the model: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}.")

    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        tokenizer_source = newest if (newest / "tokenizer_config.json").exists() else Path(run_dir)
        try:
            AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(staging)
        except (OSError, ValueError) as err:
            logger.warning("No tokenizer saved beside the averaged model (%s).", err)
    return output


def run(argv: list[str] | None = None) -> Path:
    parser = ArgumentParser(prog="hf-vanilla-average", description=__doc__)
    parser.add_argument("run_dir", help="Training output folder holding checkpoint-N folders.")
    parser.add_argument("--last", type=at_least(1), default=5, help="How many of the newest checkpoints to average (default 5).")
    parser.add_argument("--output_dir", required=True, help="Where to write the averaged model (must not exist or be empty).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = average_checkpoints(args.run_dir, args.last, args.output_dir)
    print(f"Averaged model written to {output}")
    return output


main = console_script(run)


if __name__ == "__main__":
    main()
