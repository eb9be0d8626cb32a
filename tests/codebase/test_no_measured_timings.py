"""No measured wall time or speed-up in the code's docstrings and comments.

A timing measured once on one machine goes stale the day the code or the machine
changes, and a comment cannot be rerun; measurements belong in docs/ and
benchmarks/README.md, in sections that name the machine and the command (or in a
benchmark's output). Configs' docstrings may
state the expected *result* (barriers, losses, errors), never how long a run takes.

    python tests/codebase/test_no_measured_timings.py   # list what it finds
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

from helpers import ROOT

SCANNED = ("lmc", "configs", "benchmarks")

_NUMBER = r"(?<![\w.])\d+(?:\.\d+)?"
TIMING = re.compile(
    "|".join(
        [
            # "12.3 s", "5 min", "40 ms", "2 hours" (a duration that was measured)
            _NUMBER + r"\s*(?:s|ms|us|µs|sec|secs|seconds?|mins?|minutes?|h|hours?)\b",
            # "1.46x faster", "3x speed-up" (not "32 x 32", a shape)
            _NUMBER + r"x\b",
            # "150 img/s", "3 steps/s"
            _NUMBER + r"\s*\w+/s\b",
            r"\bspeed-?ups? of\s*" + _NUMBER,
        ]
    )
)


# A number right after these is a bar to meet or a setting, not a measurement:
# "bar: >= 5x", "within 3x", "a line every 30 s", "else 120 s".
NOT_MEASURED = re.compile(r"(?:<=|>=|within|at most|at least|every|else|by default)\s*~?$")


def states_timing(text: str) -> bool:
    return any(not NOT_MEASURED.search(text[: m.start()]) for m in TIMING.finditer(text))


def docstrings_and_comments(source: str):
    """(line, text) of every comment and docstring of a Python source."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                first = node.body[0].lineno
                for offset, line in enumerate(doc.splitlines()):
                    yield first + offset, line


def timing_claims(path: Path) -> list[str]:
    """`file:line: text` for each comment or docstring line stating a timing."""
    source = path.read_text()
    rel = path.relative_to(ROOT)
    return [
        f"{rel}:{line}: {text.strip()}"
        for line, text in docstrings_and_comments(source)
        if states_timing(text)
    ]


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_the_pattern_finds_timings_and_leaves_sizes_alone():
    for claim in ("took 12.3 s", "5 min on 2 cores", "1.46x faster", "a 3x speed-up",
                  "150 img/s", "40 ms per step", "a speedup of 2"):  # fmt: skip
        assert states_timing(claim), claim
    for fine in ("the 3x512 MLP", "2x2 max-pool", "ResNet-20 (x8)", "steps 5 to 10",
                 "width 0.5", "10 classes", "version 0.12.8", "1e-3 lr", "3 x 32 x 32",
                 "bar: >= 5x faster", "within 3x", "a line every 30 s", "else 120 s"):  # fmt: skip
        assert not states_timing(fine), fine


def test_no_docstring_or_comment_states_a_measured_timing():
    found = [claim for path in scanned_files() for claim in timing_claims(path)]
    assert not found, (
        "measured timings in code (move them to docs/ or benchmarks/README.md):\n"
        + "\n".join(found)
    )


if __name__ == "__main__":
    claims = [claim for path in scanned_files() for claim in timing_claims(path)]
    print("\n".join(claims) or "no timings found")
    sys.exit(1 if claims else 0)
