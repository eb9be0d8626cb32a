"""Input checks shared by the alignment methods: matching trees, finite weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmc.align.spec import Path
from lmc.errors import UserError


def _fmt(path: Path) -> str:
    return "/".join(map(str, path)) or "<root>"


def flat(tree) -> list[tuple[Path, object]]:
    from lmc.align.tracing.trace import tree_paths

    return tree_paths(tree)


def check_same_structure(trees: Sequence, names: Sequence[str]) -> None:
    """UserError naming the first path where the trees differ (missing or shape)."""
    ref = {p: np.shape(x) for p, x in flat(trees[0])}
    for tree, name in zip(trees[1:], names[1:], strict=True):
        other = {p: np.shape(x) for p, x in flat(tree)}
        for path in sorted(set(ref) | set(other), key=lambda p: tuple(map(str, p))):
            a, b = ref.get(path), other.get(path)
            if a is None or b is None:
                have, lack = (names[0], name) if b is None else (name, names[0])
                shape = a if b is None else b
                raise UserError(
                    f"{have} has a leaf {_fmt(path)!r} (shape {shape}) that {lack} lacks: the "
                    "models must have the same architecture"
                )
            if a != b:
                raise UserError(
                    f"{_fmt(path)!r} has shape {a} in {names[0]} but {b} in {name}: the models "
                    "must have the same architecture"
                )


def check_finite(tree, name: str) -> None:
    """UserError naming the first leaf holding NaN or inf."""
    # On the host: a jitted check would compile once per tree structure, which costs
    # more than scanning the weights.
    for path, x in flat(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise UserError(
                f"{name} has NaN or inf values in {_fmt(path)!r}; alignment needs finite weights "
                "(did training diverge?)"
            )
