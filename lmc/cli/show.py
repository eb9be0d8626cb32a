"""`lmc run --config=FILE --show`: every config key, its value, and the comment that
explains it (taken from the lines that set it in lmc/config_base.py and the file)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

_ASSIGN = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*=")
_MULTI = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*,\s*(c\.[\w.,\s]+)=")


def comments(source: str) -> dict[str, str]:
    """Dotted key -> comment, for assignments `c.a.b = ...  # why` (or a comment block
    right above the assignment). Later assignments (a paper config) win."""
    found: dict[str, str] = {}
    lines = source.splitlines()
    trailing = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    block: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        keys = []
        multi = _MULTI.match(line)
        if multi:
            keys = [multi.group(1)] + [
                k.strip()[2:] for k in multi.group(2).split(",") if k.strip()
            ]
        elif _ASSIGN.match(line):
            keys = [_ASSIGN.match(line).group(1)]
        note = trailing.get(number) if not stripped.startswith("#") else None
        text = " ".join([*block, note] if note else block)
        for key in keys:
            if text and "fmt:" not in text:
                found[key] = text
        block = []
    return found


def flatten(config, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        if hasattr(value, "keys"):
            out += flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def describe(config, config_file: str) -> str:
    from lmc import config_base

    notes = comments(Path(config_base.__file__).read_text())
    path = Path(config_file.split(":")[0])
    if path.is_file():
        notes.update(comments(path.read_text()))
    rows = flatten(config)
    width = max(len(k) for k, _ in rows)
    lines = [f"# {config_file}: {len(rows)} keys; override any with --config.KEY=VALUE"]
    for key, value in rows:
        note = notes.get(key, "")
        lines.append(f"{key.ljust(width)} = {value!r}" + (f"   # {note}" if note else ""))
    return "\n".join(lines)
