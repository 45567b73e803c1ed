"""The README is for a newcomer: it fits on a few screens, links every page of docs/, and
no user-facing page carries issue numbers or development history markers."""

from __future__ import annotations

import re

from conftest import REPO

MAX_README_LINES = 250


def markdown_links(text: str) -> set[str]:
    return {target for target in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in target}


def test_the_readme_fits_on_a_few_screens():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    linked = markdown_links(readme)
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert pages and pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in markdown_links(page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_no_user_facing_page_names_an_issue_number():
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        found = re.findall(r"(?i)\bissue[ -]?#?\d+|\(#\d+\)", page.read_text())
        assert found == [], f"{page.name}: {found}"
