"""The fenced code blocks of the documentation's Markdown pages, with the HTML comment that marks
each (the line just above its fence), for the tests that run or validate them.

Marks (invisible on GitHub and on the site):

- ``<!-- tutorial: run | expect "TEXT" | ... -->`` above a ``bash`` block: tests/test_tutorial.py
  runs it as printed, in order, and checks that it exits 0 and prints every TEXT;
- ``<!-- tutorial: file NAME -->`` above a block: the test writes the block to NAME first;
- ``<!-- tutorial: skip (why) -->`` above a ``bash`` block: not run (a server, an install);
- ``<!-- yaml: fragment -->`` above a ``yaml`` block: part of an experiment, validated inside a
  complete one; ``<!-- yaml: not an experiment (what it is) -->``: not validated as one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorials" / "first-model.md"

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!--\s*((?:(?!-->).)*?)\s*-->\s*\n$", re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')


@dataclass(frozen=True)
class Block:
    page: str  # relative to docs/
    line: int  # of the opening fence
    language: str
    text: str
    mark: str  # the comment just above the fence, "" if none

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    @property
    def expected(self) -> list[str]:
        quoted = re.findall(r'expect "((?:[^"\\]|\\.)*)"', self.mark)
        return [text.replace('\\"', '"') for text in quoted]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        mark = MARK.search(before[-400:])
        body = match.group(2)
        snippet = SNIPPET.match(body.strip())
        if snippet:  # pymdownx.snippets includes a repository file verbatim
            body = (REPO / snippet.group(1)).read_text()
        found.append(
            Block(
                page=page.relative_to(DOCS).as_posix(),
                line=before.count("\n") + 1,
                language=match.group(1),
                text=body,
                mark=mark.group(1) if mark else "",
            )
        )
    return found


def all_blocks() -> list[Block]:
    return [block for page in sorted(DOCS.rglob("*.md")) for block in blocks(page)]
