"""The README and docs/ as a user's clone sees them: every relative link and picture is there, every #anchor is a
heading of the page it points into, nothing points outside the repository, and the README stays short and keeps the
test command that CI runs."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks (a '#' in a bash block is a comment, not a heading)."""
    lines, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(path: Path) -> list[str]:
    targets = [target for line in prose_lines(path) for target in LINK.findall(line)]
    return [target for target in targets if not re.match(r"[a-z]+:", target)]  # https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_and_heading_in_the_repository(page):
    problems = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if REPO not in destination.parents and destination != REPO:
            problems.append(f"{target}: outside the repository")
        elif not destination.exists():
            problems.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{target}: no heading with this anchor in {destination.name}")
    assert not problems, f"{page.name}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_no_page_names_a_path_outside_the_repository(page):
    assert "../shared" not in page.read_text(encoding="utf-8")


def test_the_anchors_are_githubs():
    page = REPO / "docs" / "training.md"
    assert {"the-papers-recipe-on-wmt14-english-german", "start-from-a-pretrained-marian-opus-mt-model"} <= anchors(page)


def test_the_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 260  # 250 until the README carried the quality table
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_command = next(command for command in commands if "pytest" in command)
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def table_rows(text: str, first_cell: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header starts with `first_cell`: {first cell: other cells}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("page", ["README.md", "docs/deploying.md"])
def test_the_speed_tables_give_the_committed_one_engine_per_process_figures(page):
    text = (REPO / page).read_text(encoding="utf-8")
    results = json.loads((REPO / "benchmarks" / "results_cpu_engines.json").read_text())
    assert "python benchmarks/bench_cpu_engines.py --threads 2,1" in text
    cases = {"greedy, batch 1": "greedy b1", "greedy, batch 16": "greedy b16", "beam 4, batch 1": "beam4 b1"}
    if page == "README.md":
        engines = ["marian", "plain", "default", "int8", "ct2-int8"]
        rows = {(label, "2"): cells for label, cells in table_rows(text, "2 threads").items()}
    else:
        engines = ["marian", "plain", "default", "int8", "ct2", "ct2-int8"]
        rows = {}
        for label, cells in table_rows(text, "new tokens/s").items():
            case, _, threads = label.rpartition(", ")
            rows[(case, threads.split()[0])] = cells
    assert {case for case, _ in rows} == set(cases)
    for (label, threads), cells in rows.items():
        measured = results["table"][threads][cases[label]]
        for engine, cell in zip(engines, cells, strict=True):
            decimals = 0 if label == "greedy, batch 16" else 1
            assert float(cell) == round(measured[engine]["best"], decimals), (page, label, threads, engine)


def test_the_readme_quality_table_is_built_from_the_committed_result_files():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import quality_table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = quality_table.readme_block(readme)
    runs = quality_table.read_runs(REPO / "benchmarks" / "results_quality", 1000)
    expected = quality_table.render(runs, quality_table.default_loss_steps(1000), per_seed=False, compact=True)
    assert readme[start:end].strip() == expected, "run: python benchmarks/quality_table.py --readme README.md"
