"""How users start the commands: the installed console scripts, `python -m train.X` in a checkout, and what the
distribution installs (the library only: no top-level `train` package in site-packages)."""

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from hf_vanilla_transformer.translation import load_translation_model, translate

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "translate", "evaluate", "average_checkpoints", "visualize", "export", "convert")
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def run_side_by_side(commands: dict[str, list[str]], cwd, stdin: dict[str, str] | None = None) -> dict[str, str]:
    """Start every command at once, wait for all; each must succeed. Returns their standard outputs."""
    processes = {
        name: subprocess.Popen(
            command, cwd=cwd, env=ENV, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        for name, command in commands.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate((stdin or {}).get(name, ""), timeout=300)
        assert process.returncode == 0, (name, err[-3000:])
        results[name] = out
    return results


def test_console_scripts(run_dir, tmp_path):
    """Every script's --help, and hf-vanilla-translate reading standard input, as installed, outside the checkout."""
    bin_dir = Path(sys.executable).parent
    names = ("train", "translate", "evaluate", "average", "visualize", "export", "convert")
    commands = {name: [str(bin_dir / f"hf-vanilla-{name}"), "--help"] for name in names}
    commands["stdin"] = [str(bin_dir / "hf-vanilla-translate"), str(run_dir), "--num_beams", "1", "--device", "cpu"]
    sentences = ["every forest runs", "my dog sleeps near the river"]
    results = run_side_by_side(commands, tmp_path, stdin={"stdin": "\n".join(sentences) + "\n"})

    assert "--max_tokens_per_batch" in results["train"] and "--recipe" in results["train"]
    assert "--output_dir" in results["train"] and "--learning_rate" in results["train"]  # the Trainer's arguments
    assert "--num_return_sequences" in results["translate"] and "--file" in results["translate"]
    assert "--output_file" in results["evaluate"] and "--test_file" in results["evaluate"]
    assert "--last" in results["average"] and "--output_dir" in results["average"]
    assert "--layer" in results["visualize"] and "--head" in results["visualize"]
    assert "--to" in results["export"] and "int8" in results["export"]
    assert "--from" in results["convert"] and "marian" in results["convert"]
    model, tokenizer = load_translation_model(str(run_dir), device="cpu")
    assert results["stdin"].splitlines() == translate(model, tokenizer, sentences, num_beams=1)


def test_a_checkout_runs_the_commands_from_its_train_folder():
    """`python -m train.train` works from the checkout root, and each train/X.py hands over to cli/X.py's main."""
    same_main = "; ".join(
        f"import train.{name}, hf_vanilla_transformer.cli.{name}; "
        f"assert train.{name}.main is hf_vanilla_transformer.cli.{name}.main, '{name}'"
        for name in COMMANDS
    )
    results = run_side_by_side(
        {"help": [sys.executable, "-m", "train.train", "--help"], "mains": [sys.executable, "-c", same_main]}, REPO
    )
    assert results["help"].startswith("usage:") and "--recipe" in results["help"]


def test_the_installed_distribution_provides_no_top_level_train_package(tmp_path):
    dist = importlib.metadata.distribution("hf-vanilla-transformer")
    provided = {top for top, names in importlib.metadata.packages_distributions().items() if dist.name in names}
    assert "train" not in provided
    assert "hf_vanilla_transformer" in provided
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert len(scripts) == len(COMMANDS)
    assert all(value.startswith("hf_vanilla_transformer.cli.") for value in scripts.values()), scripts
    # Outside a checkout, `import train` must not reach this project's train/ folder.
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; spec = u.find_spec('train'); print(spec and spec.origin)"],
        cwd=tmp_path, env=ENV, text=True, capture_output=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert str(REPO) not in found, found


def imported_modules(path: Path) -> set[str]:
    """The absolute names a module imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_commands():
    """Arrows point one way: cli/ imports the library; neither the library nor cli/ imports the checkout's train/."""
    for path in sorted((REPO / "hf_vanilla_transformer").rglob("*.py")):
        names = imported_modules(path)
        where = path.relative_to(REPO)
        assert not {n for n in names if n == "train" or n.startswith("train.")}, where
        if "cli" not in where.parts:
            assert not {n for n in names if n.startswith("hf_vanilla_transformer.cli")}, where
