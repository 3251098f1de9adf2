"""The check of the library's whole-number arguments (sizes, seeds, lengths, counts), said the same way everywhere."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int, hint: str = "") -> None:
    """Raise TypeError unless `value` is an int (bool is not one: True as a size is a bug, not a 1), and ValueError
    when it is below `minimum`; `hint` says how to choose."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}." + (f" {hint}" if hint else ""))
