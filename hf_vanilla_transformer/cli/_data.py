"""The data a command's options name, loaded the same way by every command that reads data (hf-vanilla-train,
hf-vanilla-evaluate): one call of `data.load_translation_data`."""

from __future__ import annotations

import inspect


def load_data(options, cache_dir: str | None = None):
    """`load_translation_data` with the data options `options` holds (hf-vanilla-train's `DataArguments`,
    hf-vanilla-evaluate's arguments: the same names); an option a command does not have keeps its default.
    Returns the DatasetDict (an IterableDatasetDict when streamed) and the two language keys."""
    from hf_vanilla_transformer.data import load_translation_data  # datasets: not before the arguments parse

    names = inspect.signature(load_translation_data).parameters
    given = {name: getattr(options, name) for name in names if hasattr(options, name)}
    return load_translation_data(**given, cache_dir=cache_dir)
