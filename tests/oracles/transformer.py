"""Hand-written permutation spec of `lmc.models.transformer` (oracle for the tracer).

The symmetries of a pre-LayerNorm decoder-only transformer, as plain axis
permutations of its parameter leaves (paths into `{"params": ..., "model_state": {}}`):

- `P_residual` (size width): the residual stream. Written by the token and position
  embeddings and by every block's attention output and MLP output projections, read
  by every LayerNorm (scale, bias) and by the query/key/value, fc1 and unembedding
  kernels. Pre-LN normalizes over the residual axis; mean and variance over an axis
  do not change when it is permuted, so this is an exact symmetry.
- `P_block{i}_mlp` (size mlp_ratio * width): the MLP's hidden units (fc1 out, fc2 in).
- `P_block{i}_heads` (size heads): whole heads. Query, key and value kernels carry
  heads on their own axis (d, heads, head_dim), the output kernel on axis 0.
- `P_block{i}_qk` (size head_dim): dimensions within a head, shared by query and key
  (their dot product is a sum over them). Omitted with rotary positions: RoPE rotates
  fixed pairs of dimensions by fixed frequencies, so permuting them changes the scores.
- `P_block{i}_vo` (size head_dim): dimensions within a head, shared by value and the
  output projection's input.

Limitation: the true symmetry group allows a *different* within-head permutation for
every head (and the head permutation carries them along). `PermutationSpec` has no
per-block permutations, so `qk`/`vo` here are one permutation shared by all heads of
a block: a subgroup of the symmetries, still exact, and what weight matching searches.
"""

from __future__ import annotations

import numpy as np

from lmc.align.spec import AxisRef, PermutationSpec, get_leaf

PARAMS = "params"


def _ref(*path_and_axis) -> AxisRef:
    *path, axis = path_and_axis
    return AxisRef((PARAMS, *path), axis)


def _ln(module: str) -> list[AxisRef]:
    return [_ref(*module.split("/"), "scale", 0), _ref(*module.split("/"), "bias", 0)]


def transformer_spec(tree, positions: str | None = None) -> PermutationSpec:
    """The oracle for `tree` = {"params": ..., "model_state": ...} of the transformer.

    `positions` ("learned" or "rotary") defaults to what the tree shows: a `pos_embed`
    leaf means learned positions.
    """
    params = tree[PARAMS]
    if positions is None:
        positions = "learned" if "pos_embed" in params else "rotary"
    blocks = sorted((k for k in params if k.startswith("block")), key=lambda k: int(k[5:]))
    residual = [_ref("embed", "embedding", 1)]
    if "pos_embed" in params:
        residual.append(_ref("pos_embed", 1))
    axes: dict[str, list[AxisRef]] = {"P_residual": residual}
    for b in blocks:
        attn = (b, "attn")
        residual += _ln(f"{b}/ln1") + _ln(f"{b}/ln2")
        residual += [_ref(*attn, n, "kernel", 0) for n in ("query", "key", "value")]
        residual += [_ref(*attn, "out", "kernel", 2), _ref(*attn, "out", "bias", 0)]
        residual += [
            _ref(b, "mlp", "fc1", "kernel", 0),
            _ref(b, "mlp", "fc2", "kernel", 1),
            _ref(b, "mlp", "fc2", "bias", 0),
        ]
        axes[f"P_{b}_mlp"] = [
            _ref(b, "mlp", "fc1", "kernel", 1),
            _ref(b, "mlp", "fc1", "bias", 0),
            _ref(b, "mlp", "fc2", "kernel", 0),
        ]
        heads = [_ref(*attn, n, "kernel", 1) for n in ("query", "key", "value")]
        heads += [_ref(*attn, n, "bias", 0) for n in ("query", "key", "value")]
        axes[f"P_{b}_heads"] = [*heads, _ref(*attn, "out", "kernel", 0)]
        if positions != "rotary":
            axes[f"P_{b}_qk"] = [
                _ref(*attn, n, leaf, axis)
                for n in ("query", "key")
                for leaf, axis in (("kernel", 2), ("bias", 1))
            ]
        axes[f"P_{b}_vo"] = [
            _ref(*attn, "value", "kernel", 2),
            _ref(*attn, "value", "bias", 1),
            _ref(*attn, "out", "kernel", 1),
        ]
    residual += _ln("ln_f") + [_ref("head", "kernel", 0)]
    # Every permutation lists an unblocked axis first: its size.
    sizes = {
        n: int(np.shape(get_leaf(tree, refs[0].path))[refs[0].axis]) for n, refs in axes.items()
    }
    return PermutationSpec(sizes, {n: tuple(refs) for n, refs in axes.items()})


__all__ = ["transformer_spec"]
