"""The README's and docs/'s links lead somewhere: each relative link names a file of the repository, and each
#anchor a heading of that page, as GitHub turns headings into anchors."""
import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, each space a '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a heading met again gets -1, -2, ... as on GitHub."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # no headings in code blocks
    found, seen = set(), Counter()
    for line in text.splitlines():
        if re.match(r"#{1,6} ", line):
            anchor = github_anchor(line.lstrip("#"))
            found.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
            seen[anchor] += 1
    return found


def test_github_anchor_matches_known_headings(tmp_path):
    assert github_anchor("Deployment: `export.py`") == "deployment-exportpy"
    assert github_anchor("Time to accuracy: `--recipe fast`") == "time-to-accuracy---recipe-fast"
    page = tmp_path / "page.md"
    page.write_text("# Set-up\n```\n# not a heading\n```\n## Set-up\n## Set-up\n", encoding="utf-8")
    assert anchors(page) == {"set-up", "set-up-1", "set-up-2"}


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_relative_link_and_anchor_exists(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} names no file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"
