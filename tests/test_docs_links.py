"""Every relative link in README.md and docs/**/*.md points to a file that exists and, with `#anchor`, to a
heading of that file (GitHub's anchor rule); and the docs pages are reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def prose(text: str) -> str:
    """The text without fenced code, HTML comments and inline code: links are only looked for in the rest."""
    return INLINE_CODE.sub("", COMMENT.sub("", FENCE.sub("", text)))


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for `path`'s headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(COMMENT.sub("", FENCE.sub("", path.read_text()))):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """'target: why' for every relative link of `page` that points nowhere."""
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_to_existing_files_and_headings(page: Path):
    assert broken_links(page) == [], f"{page.relative_to(REPO)} has broken links"


def test_every_docs_page_is_linked_from_the_index_and_the_index_from_the_readme():
    index = REPO / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in LINK.findall(prose(index.read_text()))}
    pages = {p.resolve() for p in (REPO / "docs").rglob("*.md")} - {index.resolve()}
    assert pages and pages <= linked, sorted(str(p.relative_to(REPO)) for p in pages - linked)
    assert "docs/README.md" in LINK.findall(prose((REPO / "README.md").read_text()))


def test_the_check_sees_a_missing_file_and_a_missing_anchor(tmp_path: Path):
    (tmp_path / "other.md").write_text("# A title: `with code`, and more\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-title-with-code-and-more) [ok](other.md#twice-1) [self](#here)\n"
                    "# Here\n[gone](missing.md) [bad](other.md#nowhere) `[code](not-a-link.md)`\n"
                    "```\n[fenced](not-a-link-either.md)\n```\n<!-- [comment](nor-this.md) -->\n"
                    "[web](https://example.org/x.md)\n")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no heading with that anchor"]
