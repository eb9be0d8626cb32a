"""The README's alignment example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_alignment_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Permutation alignment") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "recovered the planted permutation" in capsys.readouterr().out


def test_quickstart_has_exactly_two_commands():
    text = README.read_text()
    block = text[text.index("## Quickstart") :].split("```")[1]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2 and "pytest" in commands[1]
