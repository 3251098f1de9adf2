"""Every console script answers --help and an argument error before it imports torch, transformers or datasets
(issue 23: they took 8-9 s). Checked by the modules the process imports (`python -X importtime`), not by a clock."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
HEAVY = ("torch", "transformers", "datasets")
# Per script: --help, and a command line with a mistake that only the arguments show.
CASES = {
    "train": [["--help"], ["--help_trainer"], ["--learning_rate", "fast"], ["--maxsteps", "5"], ["--recipe", "nope"]],
    "translate": [["--help"], ["model", "a sentence", "--num_beams", "0"]],
    "evaluate": [["--help"], ["model", "--do_sample", "--top_p", "2"]],
    "average": [["--help"], ["run", "--last", "0", "--output_dir", "out"]],
    "visualize": [["--help"], ["model", "a sentence"]],
    "export": [["--help"], ["model", "out"]],
    "convert": [["--help"], ["--from", "fairseq", "model", "out"]],
}


def test_help_and_argument_errors_import_no_torch_transformers_or_datasets(tmp_path):
    runs = {
        (name, i): subprocess.Popen(
            [sys.executable, "-X", "importtime", str(BIN / f"hf-vanilla-{name}"), *argv],
            cwd=tmp_path, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for name, cases in CASES.items()
        for i, argv in enumerate(cases)
    }  # fmt: skip
    for (name, i), process in runs.items():
        out, err = process.communicate(timeout=300)
        argv = CASES[name][i]
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
        heavy = sorted(module for module in imported if module.split(".")[0] in HEAVY)
        assert not heavy, (name, argv, heavy[:5])
        said = [line for line in err.splitlines() if not line.startswith("import time:")]
        if argv[0].startswith("--help"):
            assert process.returncode == 0 and out.startswith("usage: hf-vanilla-"), (name, argv, said)
        else:
            assert process.returncode == 2 and len(said) == 1 and said[0].startswith("error: "), (name, argv, said)
