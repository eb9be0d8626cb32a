"""What a derived spec found and what it left alone, in words.

`summary` is the one line `spec_from_function` logs; `unpermuted` lists every
parameter axis no permutation acts on, grouped by the reason its order matters
(it reaches the model's input or output, an unknown primitive touches it, an op
mixes positions along it...).
"""

from __future__ import annotations

from collections import Counter

from lmc.align.tracing.graph import Analysis


def _fmt(path) -> str:
    return "/".join(map(str, path))


def summary(analysis: Analysis) -> str:
    """One line: permutations found (stacked ones counted), axes pinned and why."""
    spec = analysis.spec
    axes = sum(len(refs) for refs in spec.axes.values())
    stacked = f" ({len(spec.stacks)} of them one per layer)" if spec.stacks else ""
    line = f"{len(spec.axes)} permutations over {axes} parameter axes{stacked}"
    reasons = Counter(_short(why) for *_, why in analysis.unpermuted)
    if reasons:
        pinned = ", ".join(f"{why} {n}" for why, n in reasons.most_common())
        line += f"; {sum(reasons.values())} parameter axes left unpermuted ({pinned})"
    return line


def _short(why: str) -> str:
    return why.split(" (")[0] if not why.startswith("part of") else "part of a pinned reshape"


def unpermuted(analysis: Analysis) -> dict[str, list[str]]:
    """Reason -> the parameter axes ('path[axis] (size)') it leaves unpermuted."""
    out: dict[str, list[str]] = {}
    for path, axis, size, why in analysis.unpermuted:
        out.setdefault(why, []).append(f"{_fmt(path)}[{axis}] ({size})")
    return out


def format_unpermuted(analysis: Analysis) -> str:
    groups = unpermuted(analysis)
    if not groups:
        return "every parameter axis of size > 1 is permuted"
    lines = ["parameter axes left unpermuted, by reason:"]
    for why, axes in groups.items():
        lines.append(f"  {why}: {', '.join(axes)}")
    return "\n".join(lines)
