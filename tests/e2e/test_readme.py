"""The README and the docs it links to: their examples run as written, their commands
use flags that exist, their links resolve, and every guarantee names its test.

The README is short; the guide, reference and results live in docs/ and the measured
performance in benchmarks/README.md. Tests find a block by the `## ` heading of its
section, in whichever of these files holds it.
"""

import re
from pathlib import Path

from helpers import ROOT

README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md")
README_MAX_LINES = 250


def section(title: str) -> tuple[str, str]:
    """(the file that holds the `## title` section, relative to the root; the section's
    text, up to the next `## ` heading)."""
    found = [(path, text) for path in DOCS if f"\n## {title}" in (text := path.read_text())]
    assert len(found) == 1, f"## {title}: in {[str(p) for p, _ in found]}, want one file"
    path, text = found[0]
    start = text.index(f"\n## {title}") + 1
    stop = text.find("\n## ", start)
    return str(path.relative_to(ROOT)), text[start : stop if stop >= 0 else None]


def python_blocks(title: str) -> tuple[str, list[str]]:
    """(the file, the python blocks of section `title`, in order)."""
    path, text = section(title)
    return path, re.findall(r"```python\n(.*?)```", text, re.S)


def test_alignment_example_runs(capsys):
    path, blocks = python_blocks("Permutation alignment")
    exec(compile(blocks[0], path, "exec"), {})
    assert "recovered the planted permutation" in capsys.readouterr().out


def test_aligning_your_own_model_runs(capsys):
    """The section's python blocks run in order, in one namespace, and each check
    finds its spec invariant."""
    path, blocks = python_blocks("Aligning your own model")
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, path, "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count(": invariant") == 3 and "NOT invariant" not in out
    assert "4x8" in out  # one permutation per layer of the scanned model


def test_quickstart_has_exactly_two_commands():
    text = README.read_text()
    block = text[text.index("## Quickstart") :].split("```")[1]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2 and "pytest" in commands[1]


def run_first_block(title: str, capsys) -> tuple[str, float, float]:
    """Run the first python block of docs section `title`; (its output, the naive and
    the weight-matching test-loss barriers it prints)."""
    path, blocks = python_blocks(title)
    exec(compile(blocks[0], path, "exec"), {})
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


# Flags of other tools that the docs' prose names bare (without their command), and
# the file that defines each; every other bare `--flag` reads as one of lmc's.
OTHER_TOOLS_FLAGS = {"worker": "launch/tpu_pod.sh", "dry-run": "launch/tpu_pod.sh",
                     "quick": "benchmarks/run.py"}  # fmt: skip


def test_every_flag_the_docs_give_exists():
    """`lmc ...` commands and bare `--flags` in the README and the docs use lmc's own
    flags and existing config keys (--show's listing); a script's command uses flags its
    file defines."""
    from absl import flags

    from lmc.cli import flags as flags_lib
    from lmc.cli.show import flatten
    from lmc.config_base import base_config, lm_config

    root = ROOT
    fv = flags.FlagValues()
    flags_lib.define_sweep_flags(fv, ["lmc"])
    keys = {k for c in (base_config(), lm_config()) for k, _ in flatten(c)}
    spans = []
    for doc in DOCS:
        text = doc.read_text()
        spans += re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
        spans += [
            ln for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for ln in b.splitlines()
        ]
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
    path, blocks = python_blocks("Permutation alignment")
    block = next(b for b in blocks if "recipes" in b or "weight_matching_heads" in b)
    exec(compile(block, path, "exec"), {})
    out = capsys.readouterr().out
    heads, restarts = re.search(r"J over heads (\S+), per restart \[(.*)\]", out).groups()
    assert len(restarts.split(",")) == 4  # the default restarts
    assert abs(float(heads) - max(map(float, restarts.split(",")))) < 1e-2
    assert out.count("same function as B: True") == 2  # orthogonal and learned recipes


def test_importing_checkpoints_example_runs(capsys, monkeypatch):
    """The hub example (tiny GPT-NeoX fixture): the traced spec is invariant and the
    aligned, exported and reloaded copy computes the original logits."""
    monkeypatch.chdir(ROOT)
    path, blocks = python_blocks("Importing checkpoints")
    exec(compile(blocks[0], path, "exec"), {})
    out = capsys.readouterr().out
    assert ": invariant" in out and "same logits: True" in out, out


def test_readme_is_short():
    """The README guides (what lmc is, the quickstart, the configs, where to change
    what); the rest belongs in docs/."""
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_resolves():
    """Every relative link of the README and the docs names a file that exists, and an
    `#anchor` into a Markdown file names one of its headings."""
    wrong = []
    for doc in DOCS:
        prose = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        prose = re.sub(r"`[^`\n]*`", "", prose)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            where = f"{doc.relative_to(ROOT)}: {target}"
            if not path.exists():
                wrong.append(f"{where} (no such file)")
            elif anchor and path.suffix == ".md":
                headings = re.findall(
                    r"^#+ (.*)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), re.M
                )
                if anchor not in {slug(h) for h in headings}:
                    wrong.append(f"{where} (no such heading)")
    assert not wrong, wrong


def test_every_guarantee_names_its_test():
    """Each guarantee names a test, and every test file and test function the
    guarantees and the error catalogue name exists."""
    tests = {p.name: p for p in (ROOT / "tests").rglob("test_*.py")}
    reference = ROOT / "docs" / "reference"
    guarantees = (reference / "guarantees.md").read_text()
    bullets = re.findall(r"^- \*\*(.*?)\*\*(.*?)(?=^- |^## |\Z)", guarantees, re.M | re.S)
    assert len(bullets) >= 10
    unnamed = [name for name, body in bullets if not re.search(r"test_\w+\.py", body)]
    assert not unnamed, f"guarantees that name no test: {unnamed}"
    wrong = []
    for doc in ("guarantees.md", "errors.md"):
        text = (reference / doc).read_text()
        for m in re.finditer(r"(tests/[\w/]*)?(test_[\w*]+\.py)(?:::(test_\w+))?", text):
            named, files = m.group(0), [p for n, p in tests.items() if Path(n).match(m.group(2))]
            if m.group(1) and not (ROOT / named.split("::")[0]).is_file():
                wrong.append(f"{doc}: {named} (no such file)")
            elif not files:
                wrong.append(f"{doc}: {named} (no such test file)")
            elif m.group(3) and not any(f"def {m.group(3)}(" in p.read_text() for p in files):
                wrong.append(f"{doc}: {named} (no such test)")
    assert not wrong, wrong
