"""Every relative Markdown link in README.md and docs/*.md names a file that exists, and the README stays
short (a newcomer reads it in two minutes; the rest lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 160

# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are not links.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def relative_links(text: str) -> list[str]:
    text = CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
            continue  # a URL, mailto: or an anchor on the same page
        out.append(target)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    missing = [t for t in relative_links(page.read_text())
               if not (page.parent / t.split("#", 1)[0].split("?", 1)[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_finder_finds_links_and_skips_code() -> None:
    text = "see [a](docs/a.md#x), ![i](img.png \"t\"), [u](https://x.org), [s](#here), `[c](no.md)`\n" \
           "```\n[f](fenced.md)\n```\n"
    assert relative_links(text) == ["docs/a.md#x", "img.png"]


def test_readme_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"
