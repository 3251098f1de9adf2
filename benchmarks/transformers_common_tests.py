"""Run transformers' common model tests on this package's models and on MarianMTModel, and compare.

transformers' `ModelTesterMixin` (tests/test_modeling_common.py), `GenerationTesterMixin`
(tests/generation/test_utils.py) and `PipelineTesterMixin` (tests/test_pipeline_mixin.py) live in transformers'
repository, not in its wheel. This script takes a transformers tests tree, puts this package's tester
(benchmarks/transformers_common/test_modeling_vanilla_transformer.py) into it as
tests/models/vanilla_transformer/, runs pytest on it and on transformers' own
tests/models/marian/test_modeling_marian.py (its `MarianModelTest` class, the same mixins on MarianMTModel), and
prints the counts for each and the tests that fail on this model but pass on Marian, each with its one-line reason.

    # from a transformers checkout (use the tag of the installed transformers, e.g. v5.25.0)
    python benchmarks/transformers_common_tests.py --transformers_repo ~/transformers/.git --rev v5.25.0
    # or from a folder that already holds transformers' tests/ (a checkout's root, or its tests/ itself)
    python benchmarks/transformers_common_tests.py --transformers_tests /tmp/tf-tests

The tests need `parameterized` (pip install parameterized) besides this package's test extras. Tests that need a GPU,
the Hub or a package that is not installed skip on both models. The tree is copied to a temporary folder first, so the
given one is left as it was.

A tree without tests/generation/test_utils.py or tests/exporters/test_export.py (transformers' source
distribution ships tests/test_modeling_common.py but neither of those) can be run with `--stub_missing_mixins`: the
missing mixins are then empty classes, so their tests are not run on either model, and the JSON says which were
stubbed. Where the tree has no tests/models/marian/test_modeling_marian.py, the Marian column comes from
benchmarks/transformers_common/test_modeling_marian_fallback.py (this project's tester for MarianMTModel, the
same mixins), and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
OUR_TESTER = HERE / "transformers_common" / "test_modeling_vanilla_transformer.py"
MARIAN_FALLBACK = HERE / "transformers_common" / "test_modeling_marian_fallback.py"
OUR_PATH = "tests/models/vanilla_transformer/test_modeling_vanilla_transformer.py"
MARIAN_PATH = "tests/models/marian/test_modeling_marian.py"
OUR_CLASS = "VanillaTransformerModelTest"
MARIAN_CLASS = "MarianModelTest"
# Modules whose mixin classes test_modeling_common.py imports; `--stub_missing_mixins` writes empty ones.
MIXIN_MODULES = {
    "tests/generation/test_utils.py": "GenerationTesterMixin",
    "tests/exporters/test_export.py": "ExportTesterMixin",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--transformers_tests", type=Path, help="a transformers checkout's root, or its tests/ folder")
    source.add_argument("--transformers_repo", type=Path, help="a transformers git directory (bare or a checkout)")
    parser.add_argument("--rev", default=None, help="with --transformers_repo: the tag or commit to take tests/ from")
    parser.add_argument("--output", type=Path, default=HERE / "results_transformers_common.json")
    parser.add_argument("--stub_missing_mixins", action="store_true", help="empty mixins for missing mixin modules")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds for each pytest run")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression, for both runs")
    parser.add_argument("--keep", type=Path, default=None, help="build the tree here and keep it, to rerun by hand")
    args = parser.parse_args(argv)
    if args.transformers_repo is not None and not args.rev:
        parser.error("--transformers_repo needs --rev (the tag of the installed transformers, e.g. v5.25.0)")
    return args


def extract_tree(args: argparse.Namespace, root: Path) -> str:
    """Lay transformers' tests/ (and its root pytest configuration, where present) under `root`; say whence."""
    if args.transformers_repo is not None:
        archive = subprocess.run(
            ["git", f"--git-dir={git_dir(args.transformers_repo)}", "archive", args.rev, "tests", "conftest.py",
             "pyproject.toml", "setup.cfg"],
            capture_output=True,
            check=False,
        )
        if archive.returncode:  # a revision without one of the root files: take tests/ alone
            archive = subprocess.run(
                ["git", f"--git-dir={git_dir(args.transformers_repo)}", "archive", args.rev, "tests"],
                capture_output=True,
                check=True,
            )
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        return f"{args.transformers_repo} @ {args.rev}"
    source = args.transformers_tests.resolve()
    checkout = source.parent if source.name == "tests" else source
    shutil.copytree(checkout / "tests", root / "tests")
    for name in ("conftest.py", "pyproject.toml", "setup.cfg"):
        if (checkout / name).is_file():
            shutil.copy2(checkout / name, root / name)
    return str(checkout)


def git_dir(path: Path) -> Path:
    return path / ".git" if (path / ".git").is_dir() else path


def prepare_tree(root: Path, stub_missing: bool) -> dict:
    """Our tester in place, packages where relative imports need them; returns what was stubbed or substituted."""
    notes = {"stubbed_mixins": [], "marian_tester": "transformers"}
    for relative, class_name in MIXIN_MODULES.items():
        module = root / relative
        if module.exists():
            continue
        if not stub_missing:
            raise SystemExit(f"{relative} is not in this tree; give a full checkout or pass --stub_missing_mixins")
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(
            f'"""Empty stand-in written by transformers_common_tests.py: this tree has no {relative}."""\n\n\n'
            f"class {class_name}:\n    pass\n"
        )
        notes["stubbed_mixins"].append(class_name)
    target = root / OUR_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(OUR_TESTER, target)
    if not (root / MARIAN_PATH).exists():
        (root / MARIAN_PATH).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MARIAN_FALLBACK, root / MARIAN_PATH)
        notes["marian_tester"] = "fallback (benchmarks/transformers_common/test_modeling_marian_fallback.py)"
    tests = root / "tests"
    for module in tests.rglob("*.py"):  # relative imports need every folder from tests/ down to be a package
        for folder in [module.parent, *module.parent.parents]:
            if folder != tests and tests not in folder.parents:
                break
            (folder / "__init__.py").touch(exist_ok=True)
    return notes


def run_pytest(root: Path, node: str, junit: Path, keyword: str | None, timeout: int) -> str:
    env = dict(os.environ)
    # This checkout's package first, whatever else is installed; no Hub traffic.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), str(root), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = [
        sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider", "-o", "log_cli=false",
        "-o", "addopts=", f"--rootdir={root}", f"--junitxml={junit}",
    ]
    if keyword:
        command += ["-k", keyword]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    return done.stdout[-4000:] + done.stderr[-2000:]


def read_junit(junit: Path) -> dict[str, dict]:
    """Test name (without its class) -> outcome and a one-line reason."""
    results = {}
    if not junit.exists():
        return results
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                reason = one_line(element.get("message") or element.text or "")
                break
        results[case.get("name")] = {"outcome": outcome, "reason": reason}
    return results


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


def counts(results: dict[str, dict]) -> dict[str, int]:
    tally = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for result in results.values():
        tally[result["outcome"]] += 1
    return tally


def compare(ours: dict[str, dict], marian: dict[str, dict]) -> list[dict]:
    """Tests that fail (or error) on this model and pass on Marian."""
    return [
        {"test": name, "outcome": result["outcome"], "reason": result["reason"]}
        for name, result in sorted(ours.items())
        if result["outcome"] in ("failed", "error") and marian.get(name, {}).get("outcome") == "passed"
    ]


def print_table(report: dict) -> None:
    print(f"transformers tests: {report['source']} (transformers {report['transformers_version']})")
    if report["stubbed_mixins"]:
        print(f"not run (stubbed, the tree lacks them): {', '.join(report['stubbed_mixins'])}")
    print(f"Marian tester: {report['marian_tester']}")
    print(f"{'model':<28}{'passed':>8}{'failed':>8}{'error':>8}{'skipped':>9}")
    for label in ("vanilla_transformer", "marian"):
        tally = report[label]["counts"]
        print(f"{label:<28}{tally['passed']:>8}{tally['failed']:>8}{tally['error']:>8}{tally['skipped']:>9}")
    worse = report["fail_on_ours_pass_on_marian"]
    print(f"\nfail on this model, pass on Marian: {len(worse)}")
    for row in worse:
        print(f"  {row['test']}: {row['reason']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import transformers

    with tempfile.TemporaryDirectory(prefix="transformers-common-") as scratch:
        root = args.keep.resolve() if args.keep else Path(scratch) / "tree"
        root.mkdir(parents=True, exist_ok=True)
        source = extract_tree(args, root)
        notes = prepare_tree(root, args.stub_missing_mixins)
        report = {"source": source, "transformers_version": transformers.__version__, **notes}
        for label, node in (
            ("vanilla_transformer", f"{OUR_PATH}::{OUR_CLASS}"),
            ("marian", f"{MARIAN_PATH}::{MARIAN_CLASS}"),
        ):
            junit = Path(scratch) / f"{label}.xml"
            tail = run_pytest(root, node, junit, args.keyword, args.timeout)
            results = read_junit(junit)
            if not results:
                print(tail, file=sys.stderr)
            report[label] = {"counts": counts(results), "tests": results}
    report["fail_on_ours_pass_on_marian"] = compare(report["vanilla_transformer"]["tests"], report["marian"]["tests"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
