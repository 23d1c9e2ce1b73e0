"""README.md and docs/*.md: every relative link points at a file that exists, and every
#anchor at a heading of that file (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.server import ROOT

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`+[^`\n]*`+")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text a reader sees as Markdown: code blocks and code spans hold no links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def heading_ids(markdown: Path) -> set[str]:
    """The ids GitHub gives a file's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated id suffixed -1, -2, ..."""
    ids: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        slug, number = base, 0
        while slug in ids:
            number += 1
            slug = f"{base}-{number}"
        ids.add(slug)
    return ids


def broken_links(markdown: Path) -> list[str]:
    """Each relative link of ``markdown`` whose file or anchor does not exist."""
    prose = _prose(markdown.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    broken = []
    for target in targets:
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (markdown.parent / path_part).resolve() if path_part else markdown
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_ids(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


def test_docs_links_every_relative_link_resolves() -> None:
    assert (ROOT / "docs").is_dir()
    problems = {doc.name: broken_links(doc) for doc in documents()}
    assert not {name: found for name, found in problems.items() if found}


def test_docs_links_broken_file_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `/health` report\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok anchor](other.md#the-health-report) [self](#page)\n"
        "[external](https://example.com/missing.md) `[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-heading) [bad self](#nowhere)\n"
        "[ref]: ./also-missing.md\n",
        encoding="utf-8",
    )
    found = broken_links(page)
    assert [problem.split(":")[0] for problem in found] == [
        "missing.md", "other.md#no-such-heading", "#nowhere", "./also-missing.md",
    ]


def test_docs_links_heading_ids_follow_github() -> None:
    page = ROOT / "docs" / "operations.md"
    ids = heading_ids(page)
    assert "two-make-runs-from-one-checkout" in ids
    assert "health-healthy-degraded-unhealthy" in ids
