"""The README's Python snippets run as written, in order, as one session would run them, against the shared tiny run
in the place of outputs/vanilla-builtin. A snippet the tests cannot run (it needs the Hub) is marked in the README
by an HTML comment on the line before it: `<!-- readme-test: skip (reason) -->`."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b")


def python_snippets(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, marked to skip) of every ```python block."""
    lines = text.splitlines()
    snippets, start = [], None
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            skip = start > 1 and bool(SKIP.search(lines[start - 2]))
            snippets.append((start, "\n".join(lines[start:number - 1]), skip))
            start = None
    return snippets


def test_the_readme_marks_only_snippets_that_need_the_hub():
    snippets = python_snippets((REPO / "README.md").read_text())
    assert len(snippets) >= 7  # the CTranslate2 one is in docs/deploying.md
    for _, code, skip in snippets:
        assert skip == ("you/your-model" in code or "Helsinki-NLP/" in code), code


def test_the_readme_python_snippets_run_as_written(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "outputs" / "vanilla-builtin", ignore=shutil.ignore_patterns("checkpoint-*"))
    has_ctranslate2 = importlib.util.find_spec("ctranslate2") is not None  # in the test extra
    if has_ctranslate2:  # docs/deploying.md's CTranslate2 snippet reads what the README's export command writes
        export = [str(Path(sys.executable).parent / "hf-vanilla-export"), "outputs/vanilla-builtin",
                  "outputs/vanilla-ct2", "--to", "ctranslate2"]  # fmt: skip
        subprocess.run(export, cwd=tmp_path, env=ENV, check=True, capture_output=True, timeout=300)
    readme = [("README.md", line, code) for line, code, skip in python_snippets((REPO / "README.md").read_text())
              if not skip]  # fmt: skip
    deploying = [("docs/deploying.md", line, code)
                 for line, code, _ in python_snippets((REPO / "docs" / "deploying.md").read_text())
                 if has_ctranslate2 and "import ctranslate2" in code]  # fmt: skip
    assert not has_ctranslate2 or deploying, "docs/deploying.md lost its CTranslate2 snippet"
    script = "\n\n".join(f"# {page}, line {line}\n{code}" for page, line, code in readme + deploying)
    (tmp_path / "readme_snippets.py").write_text(script + "\n")
    result = subprocess.run(
        [sys.executable, "readme_snippets.py"], cwd=tmp_path, env=ENV, text=True, capture_output=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "my-model" / "tokenizer.json").is_file() and (tmp_path / "my-model-int8").is_dir()
