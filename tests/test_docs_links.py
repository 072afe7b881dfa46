"""Every relative link in README.md, WORKSPACE.md and docs/ leads somewhere: its file exists and, where it
names a heading (`file.md#anchor`), that heading exists (GitHub's anchors)."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def markdown_files():
    return [ROOT / "README.md", ROOT / "WORKSPACE.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set:
    """The anchors of a Markdown text's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen, out = {}, set()
    for m in re.finditer(r"^#+ (.*)$", FENCE.sub("", text), re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: pathlib.Path) -> list:
    text = path.read_text(encoding="utf-8")
    bad = []
    for m in LINK.finditer(FENCE.sub("", text)):
        target, fragment = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        dest = pathlib.Path(os.path.normpath(path.parent / target)) if target else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}#{fragment}: no such heading in {dest.name}")
    return bad


def test_slug_follows_githubs_rules():
    assert slug("Issue 26's goals, measured on 2026-12-04's machine") == (
        "issue-26s-goals-measured-on-2026-12-04s-machine"
    )
    assert slug("Serving: export, index, search, service, page") == "serving-export-index-search-service-page"
    assert anchors("# A\n\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n[ok](#top) [gone](#bottom) [file](missing.md) [web](https://example.org)\n"
        "[there](other.md#other-page) [not there](other.md#top)\n"
    )
    assert broken_links(page) == [
        "#bottom: no such heading in page.md",
        "missing.md: no such file",
        "other.md#top: no such heading in other.md",
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(path):
    assert broken_links(path) == []
