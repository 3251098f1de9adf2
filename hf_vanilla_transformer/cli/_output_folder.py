"""What hf-vanilla-train does with an output folder that already holds a run, decided before any work is done.

- Nothing of a run there: train from scratch.
- An unfinished run (checkpoints, no all_results.json) of the same model: resume from its newest checkpoint, with the
  tokenizer saved in it, and say so.
- An unfinished run of another model: refused, naming the values that differ.
- A finished run (all_results.json, the file a run writes last): refused, unless the command asks for more steps or
  epochs than it ran, which trains it further from its newest checkpoint. A model without a run to resume: refused.
  `--overwrite_output_dir` trains from scratch instead and replaces either.
A refusal is a ValueError, which the console script prints as one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hf_vanilla_transformer._io import write_file

logger = logging.getLogger("hf_vanilla_transformer.train")

RESULTS_NAME = "all_results.json"  # written last: a folder holding it holds a finished run
MODEL_FILES = ("config.json", "model.safetensors")
# What a run writes at the top of its folder, removed by --overwrite_output_dir (the tokenizer is replaced at the end).
RUN_FILES = (RESULTS_NAME, "trainer_state.json", "config.json", "generation_config.json", "README.md")
# Values that change nothing in a trained model: a run may resume with others.
FREE_CONFIG_VALUES = ("use_cache", "chunked_loss")


@dataclass
class OutputPlan:
    checkpoint: str | None = None  # resume from it
    step: int = 0  # the checkpoint's step
    tokenizer: object | None = None  # the run's own, saved in the checkpoint
    overwrite: bool = False  # remove the previous run's files when training starts


def plan_output_folder(
    output_dir: str,
    *,
    overwrite: bool,
    resume_from_checkpoint: str | None,
    do_train: bool,
    max_steps: int,
    num_train_epochs: float,
    asked_config: Callable[[object], object],
    named_tokenizer: Callable[[], object | None],
) -> OutputPlan:
    """What to do with `output_dir`, or a ValueError saying why it cannot be used as asked.

    asked_config: the model config the command asks for, given the tokenizer it will use.
    named_tokenizer: the tokenizer the command names (--tokenizer_name or the pretrained model's), or None.
    """
    from hf_vanilla_transformer.training import last_complete_checkpoint  # imports the Trainer: not at start-up

    folder = Path(output_dir)
    if overwrite:
        return OutputPlan(overwrite=folder.exists())
    if resume_from_checkpoint:  # the user's choice, also to train a finished run further
        return _resume(output_dir, resume_from_checkpoint, asked_config, named_tokenizer)
    checkpoint = last_complete_checkpoint(output_dir)
    if (folder / RESULTS_NAME).exists():
        # Where it ended: the final model's trainer state (the newest checkpoint may be older).
        end = _state(folder / "trainer_state.json") or (_state(Path(checkpoint, "trainer_state.json")) if checkpoint else {})
        step, epoch = end.get("global_step", 0), end.get("epoch") or 0
        further = max_steps > step if max_steps > 0 else num_train_epochs > round(epoch, 6)
        if not (further and checkpoint and do_train):
            raise ValueError(
                f"{folder} holds a finished run ({RESULTS_NAME}, {step} steps). Pass --overwrite_output_dir to train "
                "again from scratch and replace it, a larger --max_steps (or --num_train_epochs) to train it further "
                "from its last checkpoint, or choose another --output_dir."
            )
    if checkpoint and do_train:
        return _resume(output_dir, checkpoint, asked_config, named_tokenizer)
    if checkpoint:
        raise ValueError(
            f"{folder} holds an unfinished run ({Path(checkpoint).name}); with --do_train False this run would write "
            "its results there. Choose another --output_dir."
        )
    found = [name for name in MODEL_FILES if (folder / name).exists()]
    if found:
        raise ValueError(
            f"{folder} holds a model ({found[0]}) and no unfinished run to resume. Pass --overwrite_output_dir to "
            "replace it, or choose another --output_dir."
        )
    return OutputPlan()


def _resume(output_dir: str, checkpoint: str, asked_config, named_tokenizer) -> OutputPlan:
    from transformers import AutoConfig, AutoTokenizer

    path = Path(checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint of a run (it has no trainer_state.json).")
    tokenizer = AutoTokenizer.from_pretrained(path)  # the run's own: training another would change the vocabulary
    named = named_tokenizer()
    if named is not None and named.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{output_dir} holds a run ({path.name}) trained with another tokenizer than the one named. "
            "Drop --tokenizer_name to resume it, pass --overwrite_output_dir to start again from scratch, or choose "
            "another --output_dir."
        )
    saved, asked = AutoConfig.from_pretrained(path), asked_config(tokenizer)
    differences = [
        f"{name} {getattr(saved, name, None)!r} there, {getattr(asked, name, None)!r} asked"
        for name in type(asked).__annotations__
        if name not in FREE_CONFIG_VALUES and getattr(saved, name, None) != getattr(asked, name, None)
    ]
    if type(saved) is not type(asked):
        differences.insert(0, f"{type(saved).__name__} there, {type(asked).__name__} asked")
    if differences:
        raise ValueError(
            f"{output_dir} holds a run of another model ({path.name}: {'; '.join(differences)}). Give "
            "the model settings it was started with to resume it, pass --overwrite_output_dir to start again from "
            "scratch, or choose another --output_dir."
        )
    step = json.loads((path / "trainer_state.json").read_text())["global_step"]
    return OutputPlan(checkpoint=str(path), step=step, tokenizer=tokenizer)


def _state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def remove_previous_run(output_dir: str) -> None:
    """--overwrite_output_dir: remove what a previous run left in `output_dir` (checkpoints, results, model), so
    that nothing of it is resumed or mixed with the new run's files; anything else there stays."""
    from hf_vanilla_transformer.training import STAGING_DIR

    folder = Path(output_dir)
    if not folder.is_dir():
        return
    removed = []
    for entry in sorted(folder.iterdir()):
        is_checkpoint = entry.is_dir() and re.fullmatch(r"checkpoint-\d+", entry.name)
        if is_checkpoint or entry.name == STAGING_DIR:
            shutil.rmtree(entry)
        elif entry.name in RUN_FILES or re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", entry.name):
            entry.unlink()
        else:
            continue
        removed.append(entry.name)
    if removed:
        logger.info("--overwrite_output_dir: removed the previous run's %s from %s.", ", ".join(removed), folder)


def write_results(output_dir: str, results: dict) -> Path:
    """all_results.json, in one rename: the last file of a finished run."""
    return write_file(os.path.join(output_dir, RESULTS_NAME), json.dumps(results, indent=4, sort_keys=True) + "\n")
