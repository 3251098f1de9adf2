"""The README and docs/ as a user's clone sees them: every relative link and picture is there, every #anchor is a
heading of the page it points into, nothing points outside the repository, and the README stays short and keeps the
test command that CI runs."""

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
    assert len(readme.splitlines()) < 250
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_command = next(command for command in commands if "pytest" in command)
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
