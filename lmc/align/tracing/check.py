"""A check users run on their own model: is a spec a symmetry of the function?

`check(fn, spec, params, *args)` applies a random element of the spec (a random
permutation for every name, one per layer for stacked ones) and reports the largest
change of the outputs: rounding-level for a correct spec, of the order of the
outputs for a wrong one. It also traces `fn` and lists every parameter axis that no
permutation acts on, and why (see `lmc.align.tracing.coverage`), so a weak spec can be told
from a model without those symmetries.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lmc.align.spec import PermutationSpec, apply_permutation, random_permutations
from lmc.align.tracing import coverage
from lmc.align.tracing.trace import analyze_function, is_static
from lmc.models.calling import plain_fn


@dataclasses.dataclass
class CheckReport:
    """`max_change`: largest |fn(P(params)) - fn(params)| over the output leaves;
    `max_output`: largest |fn(params)|; `invariant`: max_change <= rtol * max(1, max_output).
    """

    permutations: int
    moved: int
    max_change: float
    max_output: float
    invariant: bool
    summary: str
    unpermuted: dict[str, list[str]]

    def __str__(self) -> str:
        verdict = "invariant" if self.invariant else "NOT invariant: the spec is wrong for fn"
        lines = [
            f"random element of the spec ({self.moved} of {self.permutations} permutations "
            f"moved): largest output change {self.max_change:.2g} (outputs up to "
            f"{self.max_output:.2g}): {verdict}",
            f"traced: {self.summary}",
        ]
        for why, axes in self.unpermuted.items():
            lines.append(f"  unpermuted, {why}: {', '.join(axes)}")
        return "\n".join(lines)


def _leaves(out) -> list[np.ndarray]:
    return [
        np.asarray(x, np.float64)
        for x in jax.tree.leaves(out)
        if np.issubdtype(np.asarray(x).dtype, np.inexact)
    ]


def check(fn, spec: PermutationSpec, params, *args, key=None, rtol: float = 1e-4) -> CheckReport:
    """Apply a random element of `spec` to `params` and compare `fn(params, *args)`.

    `params` is the tree the spec refers to (for a `spec_from_model` spec, the combined
    {'params', 'model_state'} tree, with `fn` taking that tree, or the model itself).
    Non-array `args` are passed through as static values, as in `spec_from_function`.
    """
    fn = plain_fn(fn, 1 + len(args), "align.check")  # a model: fn(tree, x) (issue 23)
    key = jax.random.key(0) if key is None else key
    perms = random_permutations(spec, key, params)
    moved = sum(bool((np.asarray(p) != np.arange(np.shape(p)[-1])).any()) for p in perms.values())
    permuted = apply_permutation(spec, perms, params)
    # One compilation for both calls (eager flax code compiles op by op).
    static = tuple(i + 1 for i, a in enumerate(args) if is_static(a))
    jitted = jax.jit(fn, static_argnums=static)
    want, got = _leaves(jitted(params, *args)), _leaves(jitted(permuted, *args))
    change = max((float(np.abs(a - b).max()) for a, b in zip(want, got, strict=True)), default=0.0)
    scale = max((float(np.abs(a).max()) for a in want), default=0.0)
    analysis = analyze_function(fn, params, *args)
    return CheckReport(
        permutations=len(perms),
        moved=moved,
        max_change=change,
        max_output=scale,
        invariant=change <= rtol * max(1.0, scale),
        summary=coverage.summary(analysis),
        unpermuted=coverage.unpermuted(analysis),
    )
