"""The examples in README.md and docs/*.md print what the pages say they print.

sybil reads the pages. A ```python block followed by one or more ``` blocks without a language
(with prose between them, but no heading and no other fenced block) is an example, and those blocks
are what it prints: its standard output, then the exception it ends with as the last line of
Python's traceback shows it (`fullgraph.checks.graph_breaks.GraphBreakError: 3 graph breaks ...`).
`...` matches anything, for what differs between runs (addresses, timings). A page's examples run
in order in one namespace, from the repository root, so a later block may use an earlier one's
names.

An example whose first line names a file (`# example.py`) runs as that file, so the lines it
prints are counted from the top of the block; any other runs as the page itself. An example that
cannot run here (it needs a GPU or several processes, or what it shows is what pytest prints
running it) is marked `<!-- skip: next "why" -->`. The pages show what the torch pinned in
ci/constraints.txt prints, so the examples are compared on that torch only.
Other fenced blocks (```sh, ```text, fragments with no output) are not run.
"""

import contextlib
import doctest
import io
import linecache
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from unittest import SkipTest

import pytest
import torch
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE_NAME = re.compile(r"# (?P<name>\w+\.py)\n")
HEADING = re.compile(r"^#", re.MULTILINE)


def printed_examples(document: Document) -> Iterator[Region]:
    """A region per python block with the output blocks that follow it."""
    blocks = list(FencedCodeBlockLexer(language=r"[\w-]*")(document))
    for index, block in enumerate(blocks):
        if block.lexemes["language"] != "python":
            continue
        outputs, end = [], block.end
        for following in blocks[index + 1:]:
            if following.lexemes["language"] or HEADING.search(document.text[end:following.start]):
                break
            outputs.append(str(following.lexemes["source"]))
            end = following.end
        if outputs:
            yield Region(block.start, end, (block.lexemes["source"], outputs), run_example)


def run_example(example: Example) -> str | None:
    """None if the block printed what the page shows; otherwise the difference."""
    source, outputs = example.parsed
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            exec(_compiled(source, example), example.namespace)
        except Exception as error:  # the page shows it: compared below like the output
            printed.write("".join(traceback.format_exception_only(error)))
    expected, got = _rstripped("".join(outputs)), _rstripped(printed.getvalue())
    checker = doctest.OutputChecker()
    if checker.check_output(expected, got, doctest.ELLIPSIS):
        return None
    return checker.output_difference(doctest.Example("", expected), got, doctest.ELLIPSIS)


def _compiled(source: str, example: Example):
    match = FILE_NAME.match(source)
    if match is None:
        # Padded so that a traceback's line numbers are the page's own.
        return compile("\n" * example.line + source, example.path, "exec")
    # The checkers print the source line of each frame: linecache serves it as if from the file.
    name = match["name"]
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    return compile(source, name, "exec")


def _rstripped(text: str) -> str:
    # Editors strip trailing spaces from Markdown; the checkers' tables end some lines in them.
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


SYBIL = Sybil(parsers=[printed_examples, SkipParser()])
PAGES_WITH_EXAMPLES = [page for page in PAGES
                       if any(example.region.evaluator is run_example for example in SYBIL.parse(page))]


# The pages show what the pinned torch prints; torch rewords its messages and hints every release.
PAGES_TORCH = re.search(r"^torch==(\S+)$", (ROOT / "ci/constraints.txt").read_text(), re.M)[1]


@pytest.mark.skipif(torch.__version__.split("+")[0] != PAGES_TORCH,
                    reason=f"the pages show what torch {PAGES_TORCH} prints (ci/constraints.txt)")
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_examples_print_what_the_page_shows(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(linecache, "cache", dict(linecache.cache))  # the page's files go after it
    torch.manual_seed(0)
    document = SYBIL.parse(page)
    document.namespace["__name__"] = "__main__"
    for example in document:
        with contextlib.suppress(SkipTest):  # a block marked `skip: next`
            example.evaluate()
