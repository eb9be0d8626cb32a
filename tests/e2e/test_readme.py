"""The README's alignment example runs as written."""

import re

from helpers import ROOT

README = ROOT / "README.md"


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


def run_first_block(title: str, capsys) -> tuple[str, float, float]:
    """Run the first python block of README section `title`; (its output, the naive and
    the weight-matching test-loss barriers it prints)."""
    text = README.read_text()
    start = text.index(f"## {title}")
    section = text[start : text.index("\n## ", start + 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    barriers = dict(
        re.findall(r"^(naive|weight matching): test-loss barrier ([0-9.]+)$", out, re.M)
    )
    return out, float(barriers["naive"]), float(barriers["weight matching"])


def test_your_own_model_example_runs_and_alignment_helps(capsys):
    """The user-model example (flax.linen module, lmc.data, training, alignment, curve)
    runs as written; weight matching removes most of the naive barrier."""
    out, naive, aligned = run_first_block("Your own model, from data to curve", capsys)
    assert naive > 0.1 and aligned < 0.5 * naive, out


# Flags of other tools that the README's prose names bare (without their command), and
# the file that defines each; every other bare `--flag` reads as one of lmc's.
OTHER_TOOLS_FLAGS = {"worker": "launch/tpu_pod.sh", "dry-run": "launch/tpu_pod.sh",
                     "quick": "benchmarks/run.py"}  # fmt: skip


def test_every_flag_the_readme_gives_exists():
    """`lmc ...` commands and bare `--flags` use lmc's own flags and existing config keys
    (--show's listing); a script's command uses flags its file defines."""
    from absl import flags

    from lmc.cli import flags as flags_lib
    from lmc.cli.show import flatten
    from lmc.config_base import base_config, lm_config

    root = README.parent
    fv = flags.FlagValues()
    flags_lib.define_sweep_flags(fv, ["lmc"])
    keys = {k for c in (base_config(), lm_config()) for k, _ in flatten(c)}
    text = README.read_text()
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    spans += [ln for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for ln in b.splitlines()]
    wrong = []
    for span in spans:
        tokens = [t for t in span.split() if t != "python"]
        if not tokens:
            continue
        script = root / tokens[0]
        for token in (t for t in tokens if t.startswith("--")):
            name = token[2:].split("=", 1)[0]
            if tokens[0].endswith((".py", ".sh", ".sbatch")) and script.is_file():
                ok = f"--{name}" in script.read_text()
            elif tokens[0] != "lmc" and not tokens[0].startswith("--"):
                continue  # another program's command line
            elif name.startswith("config."):
                ok = name[7:] in keys or re.fullmatch(r"[a-z]|KEY|a\.b", name[7:]) is not None
            elif name in OTHER_TOOLS_FLAGS and tokens[0] == token:
                ok = f"--{name}" in (root / OTHER_TOOLS_FLAGS[name]).read_text()
            else:
                ok = name in fv or name == "help" or name.startswith("xla_")
            if not ok:
                wrong.append(f"{token} in `{span}`")
    assert not wrong, wrong


def test_your_own_nnx_model_example_runs_and_alignment_helps(capsys):
    """The NNX example (factory, lmc.training, alignment, curve, nnx_update) runs as
    written; weight matching removes most of the naive barrier, and the aligned module
    written back with nnx_update computes B's function."""
    out, naive, aligned = run_first_block("Your own NNX model, from data to curve", capsys)
    assert naive > 0.03 and aligned < 0.5 * naive, out
    assert "aligned B computes B's function: True" in out


def test_transformer_recipes_example_runs(capsys):
    """The recipes block of the alignment section: the heads recipe returns its best
    restart, and the orthogonal and learned recipes keep B's function."""
    text = README.read_text()
    start = text.index("## Permutation alignment")
    section = text[start : text.index("\n## ", start + 1)]
    block = next(
        b
        for b in re.findall(r"```python\n(.*?)```", section, re.S)
        if "recipes" in b or "weight_matching_heads" in b
    )
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    heads, restarts = re.search(r"J over heads (\S+), per restart \[(.*)\]", out).groups()
    assert len(restarts.split(",")) == 4  # the default restarts
    assert abs(float(heads) - max(map(float, restarts.split(",")))) < 1e-2
    assert out.count("same function as B: True") == 2  # orthogonal and learned recipes


def test_importing_checkpoints_example_runs(capsys, monkeypatch):
    """The hub example (tiny GPT-NeoX fixture): the traced spec is invariant and the
    aligned, exported and reloaded copy computes the original logits."""
    monkeypatch.chdir(README.parent)
    text = README.read_text()
    start = text.index("## Importing checkpoints")
    section = text[start : text.index("\n## ", start + 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert ": invariant" in out and "same logits: True" in out, out
