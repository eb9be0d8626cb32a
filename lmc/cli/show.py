"""`lmc run --config=FILE --show`: every config key, its value, and the comment that
explains it.

A comment belongs to the assignment it sits on (or right above), and is shown only if
that assignment is the one that set the value: the config is built again under a line
tracer, so an assignment in a function the config never calls (`lm_config()` for an
image config) or one a later assignment overrides never lends its comment. A key set
on the command line shows no file comment, and says so.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
import tokenize
from pathlib import Path

_ASSIGN = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*=")
_MULTI = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*,\s*(c\.[\w.,\s]+)=")


def assignments(source: str) -> dict[int, tuple[list[str], str]]:
    """Line number -> (dotted keys, comment) for each assignment `c.a.b = ...  # why`
    (the comment: the trailing one and a comment block right above; may be "")."""
    found = {}
    trailing = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    block: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
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
        note = trailing.get(number)
        text = " ".join([*block, note] if note else block)
        if keys:
            found[number] = (keys, "" if "fmt:" in text else text)
        block = []
    return found


def executed_lines(config_file: str) -> list[tuple[str, int]]:
    """(file, line) of every line run while building the config of `config_file`
    (`path[:arg]`), in order, for lmc.config_base and the file itself."""
    from lmc import config_base

    path, _, arg = config_file.partition(":")
    spec = importlib.util.spec_from_file_location("lmc_show_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = {os.path.realpath(config_base.__file__), os.path.realpath(path)}
    order = []

    def trace(frame, event, _):
        filename = os.path.realpath(frame.f_code.co_filename)
        if filename not in files:
            return None
        if event == "line":
            order.append((filename, frame.f_lineno))
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        module.get_config(arg) if arg else module.get_config()
    finally:
        sys.settrace(previous)
    return order


def comments(config_file: str) -> dict[str, str]:
    """Dotted key -> the comment of the assignment that set its value ("" if none)."""
    parsed = {}
    found: dict[str, str] = {}
    for filename, number in executed_lines(config_file):
        if filename not in parsed:
            parsed[filename] = assignments(Path(filename).read_text())
        keys, text = parsed[filename].get(number, ([], ""))
        for key in keys:
            found[key] = text
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


def describe(config, config_file: str, overridden=()) -> str:
    """The `--show` listing; `overridden`: dotted keys set on the command line."""
    notes = comments(config_file)
    rows = flatten(config)
    width = max(len(k) for k, _ in rows)
    lines = [f"# {config_file}: {len(rows)} keys; override any with --config.KEY=VALUE"]
    for key, value in rows:
        note = "set on the command line" if key in overridden else notes.get(key, "")
        lines.append(f"{key.ljust(width)} = {value!r}" + (f"   # {note}" if note else ""))
    return "\n".join(lines)
