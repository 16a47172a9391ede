"""Every relative link in README.md and docs/*.md points to a file that exists, and every
``#anchor`` on a Markdown page to one of its headings (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and [text](target "title"); images too. Code spans are removed first,
# so a link-like text inside backticks is not taken for a link.
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for heading in HEADING.findall(text):
        base = anchor = slug(heading)
        n = 0
        while anchor in found:  # GitHub numbers repeated headings
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def relative_links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not t.startswith(EXTERNAL)]


def test_the_pages_are_there() -> None:
    assert (ROOT / "README.md") in PAGES
    assert len(PAGES) > 1, "no docs/*.md found"


def test_every_relative_link_points_to_an_existing_file() -> None:
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            linked = page.parent / path if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_the_link_finder_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](docs/a.md#part), [b](b.md "the title"), [web](https://x.org) and [top](#top).\n'
        "`[not](a-link.md)`\n```\n[nor](this.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["docs/a.md#part", "b.md", "#top"]


def test_anchors_follow_githubs_slugs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Exactly once (`EMOTION_STREAM_DELIVERY=exactly_once`)\n"
        "## Machine and conditions — read this\n## Tests\n## Tests\n",
        encoding="utf-8",
    )
    assert anchors(page) == {
        "exactly-once-emotion_stream_deliveryexactly_once",
        "machine-and-conditions--read-this",
        "tests",
        "tests-1",
    }
