"""hf-vanilla-train as installed: the console script reads its command line first, without torch or transformers
(`train_options.read_command_line`), so that --help and a mistake answer in a fraction of a second; then it imports
the training stack and runs `train.py`. (Nothing imports this module: `train.py` takes its options from
train_options.py.)
"""

from __future__ import annotations

import sys

from hf_vanilla_transformer.cli._errors import console_script, load_package
from hf_vanilla_transformer.cli.train_options import read_command_line


def run(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    read_command_line(argv)
    load_package()
    from hf_vanilla_transformer.cli import train

    return train.run(argv)


main = console_script(run)


if __name__ == "__main__":
    main()
