"""How every console script meets a mistake: one line on standard error, `error: <what is wrong>`, and exit status 2.

The rule: ValueError, OSError (FileNotFoundError, a Hub or network failure, ...), ImportError and a config's
validation error (huggingface_hub's StrictDataclassError) are how this package, transformers, datasets and
huggingface_hub say that an argument, a file, a name, a config value or the installation is wrong. A console script
prints such an exception's message on one line, without the traceback; `--debug` (for hf-vanilla-train, whose
`--debug` is the Trainer's: `--log_level debug`) shows the traceback too. Any other exception
is a bug and keeps its traceback. Argument errors are one line as well, and options may stand anywhere among the
positional arguments (`hf-vanilla-translate MODEL --num_beams 1 "a sentence"`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, OSError, ImportError)


def shows_traceback(argv: list[str]) -> bool:
    """Whether the command line asks for tracebacks: `--debug` (with or without a value), or `--log_level debug`."""
    for i, item in enumerate(argv):
        if item == "--debug" or item.startswith("--debug="):
            return True
        if item == "--log_level=debug" or (item == "--log_level" and argv[i + 1 : i + 2] == ["debug"]):
            return True
    return False


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is one of the module's rule. A @strict config (this package's, transformers') refuses a value
    with huggingface_hub's StrictDataclassError, looked up once huggingface_hub is loaded: only then can one occur."""
    strict_errors = getattr(sys.modules.get("huggingface_hub.errors"), "StrictDataclassError", ())
    return isinstance(error, (*USER_ERRORS, strict_errors))


def one_line(error: BaseException) -> str:
    """The exception's message on one line (transformers' and huggingface_hub's messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def console_script(run: Callable[[list[str]], object]) -> Callable[[list[str] | None], None]:
    """The `main(argv=None)` of a console script whose work is `run(argv)`: it returns nothing (exit status 0), and a
    user error (see the module's rule) ends it with `error: <message>` and exit status 2. Ctrl-C ends it with one line,
    `interrupted` (and what to do next, when the command said so), and exit status 130, as for any program that
    SIGINT stops."""

    @functools.wraps(run)
    def main(argv: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            run(argv)
        except Exception as error:
            if shows_traceback(argv) or not is_user_error(error):
                raise
            print(f"error: {one_line(error)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as interrupt:
            if shows_traceback(argv):
                raise
            print(f"\ninterrupted: {interrupt}" if str(interrupt) else "\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None

    main.__name__ = main.__qualname__ = "main"
    return main


class OneLineErrors:
    """An argument parser's errors as one line, `error: <message> (see PROG --help)`, exit status 2; argparse's usage
    block, which can run to a screenful, stays in --help."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def load_package() -> None:
    """What a console script does once its arguments parse, and not before: import the package's classes and register
    them with transformers. That costs seconds of torch and transformers, which --help and an argument error need not
    wait for (the package defers it in a console script's process; see its docstring)."""
    from hf_vanilla_transformer import register_with_transformers

    register_with_transformers()


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """argparse for the console scripts: one-line errors, options anywhere among the positional arguments
    (`parse_intermixed_args`), the description shown as written, and `--debug`; the package loads once the arguments
    parse (`load_package`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="On an error, show its traceback too.")

    def parse_args(self, args=None, namespace=None):
        parsed = self.parse_intermixed_args(args, namespace)
        load_package()
        return parsed


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def in_range(low: float, high: float, low_open: bool = True, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number between `low` and `high` (open or closed at each end)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "float"
    return parse
