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


def test_aligning_your_own_model_runs(capsys):
    """The section's python blocks run in order, in one namespace, and each check
    finds its spec invariant."""
    text = README.read_text()
    start = text.index("## Aligning your own model")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count(": invariant") == 3 and "NOT invariant" not in out
    assert "4x8" in out  # one permutation per layer of the scanned model


def test_quickstart_has_exactly_two_commands():
    text = README.read_text()
    block = text[text.index("## Quickstart") :].split("```")[1]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2 and "pytest" in commands[1]


def test_your_own_model_example_runs_and_alignment_helps(capsys):
    """The user-model example (flax.linen module, lmc.data, training, alignment, curve)
    runs as written; weight matching removes most of the naive barrier."""
    import re as re_

    text = README.read_text()
    start = text.index("## Your own model, from data to curve")
    section = text[start : text.index("\n## ", start + 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    barriers = dict(
        re_.findall(r"^(naive|weight matching): test-loss barrier ([0-9.]+)$", out, re_.M)
    )
    naive, aligned = float(barriers["naive"]), float(barriers["weight matching"])
    assert naive > 0.1 and aligned < 0.5 * naive, out
