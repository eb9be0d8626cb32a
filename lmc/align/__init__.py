"""Permutation alignment: reconcile the hidden-unit order of two networks.

    from lmc import align
    spec = align.spec_from_model(model, x)                # derived from the jaxpr
    spec = align.spec_from_function(apply_fn, params, x)  # any pure JAX function
    perms, info = align.weight_matching(spec, params_a, params_b, key=jax.random.key(0))
    tree_b2 = align.apply_permutation(spec, perms, {"params": params_b, "model_state": state_b})

Conventions (see `lmc.align.spec`):
- `perms` maps permutation name -> int array; permuting is `take(x, perm, axis)`,
  so `perm[i]` is the unit of B that lands at position i (matched to A's unit i).
- A spec's paths refer into the tree it was built for. `spec_from_model` uses the
  combined tree {"params": ..., "model_state": ...}, so
  BatchNorm running statistics permute with their channels. The matching methods
  accept params alone (statistics are not weights); `apply_permutation` needs the
  combined tree whenever the spec touches the model state.
- Blocked axes (`AxisRef.inner`): an axis holding several factors, e.g. a dense
  kernel after an NHWC flatten, is viewed as (outer, size, inner).

Stacked permutations (`spec.stacks`): one permutation per layer of a scanned model
(`nn.scan`, `jax.lax.scan`); `perms[name]` is then an (L, n) array, and every method
and helper takes them.

`check(fn, spec, params, *args)` applies a random element of the spec and reports the
largest output change, and which parameter axes stay unpermuted and why.

Methods: `weight_matching`, `activation_matching`, `ste`, `merge_many`, and
`learned_matching` (orthogonal maps learned on the path loss; `lmc.align.continuous.learned`).
Recipes for attention models, from a model and two combined trees to B aligned
(`lmc.align.recipes`): `weight_matching_heads`, `weight_matching_orthogonal`, and
`learned_matching` called with a model first. Helpers:
`identity`, `compose`, `inverse`, `random_permutations`. Specs are always traced;
the hand-written specs that check the tracer live with the tests (`tests/oracles`).
"""

from lmc.align.continuous.learned import orthogonal_classes
from lmc.align.discrete.activation_matching import activation_matching
from lmc.align.discrete.merge_many import merge_many
from lmc.align.discrete.ste import ste
from lmc.align.discrete.weight_matching import weight_matching
from lmc.align.recipes import (
    learned_matching,
    lowrank_control,
    weight_matching_heads,
    weight_matching_orthogonal,
)
from lmc.align.spec import (
    AxisRef,
    PermutationSpec,
    apply_permutation,
    compose,
    identity,
    inverse,
    nested_units,
    random_permutations,
)
from lmc.align.tracing import trace
from lmc.align.tracing.check import CheckReport, check
from lmc.align.tracing.trace import spec_from_function, spec_from_model

__all__ = [
    "AxisRef",
    "CheckReport",
    "check",
    "PermutationSpec",
    "activation_matching",
    "apply_permutation",
    "compose",
    "identity",
    "inverse",
    "learned_matching",
    "lowrank_control",
    "merge_many",
    "nested_units",
    "orthogonal_classes",
    "random_permutations",
    "spec_from_function",
    "spec_from_model",
    "ste",
    "trace",
    "weight_matching",
    "weight_matching_heads",
    "weight_matching_orthogonal",
]
