"""Hand-written permutation specs for `lmc.models` (test oracles for the tracer).

These follow the models' code by hand, the way Git Re-Basin's specs do. They are
kept as independent checks: `spec_from_model` must derive the same spec up to names.
All paths refer into the combined tree `{"params": ..., "model_state": ...}`; pass
that tree (shapes or arrays) so the oracle can see which optional layers exist.
"""

from __future__ import annotations

from lmc.align.spec import AxisRef, PermutationSpec

PARAMS, STATE = "params", "model_state"


def _path(root: str, module: str, leaf: str) -> tuple[str, ...]:
    return (root, *module.split("/"), leaf)


def _module(tree, root: str, module: str) -> dict:
    node = tree[root]
    for key in module.split("/"):
        node = node.get(key, {})
    return node


def _out(tree, module: str, axis: int) -> list[AxisRef]:
    """A layer's output units: its kernel's output axis and its bias, if it has one."""
    refs = [AxisRef(_path(PARAMS, module, "kernel"), axis)]
    if "bias" in _module(tree, PARAMS, module):
        refs.append(AxisRef(_path(PARAMS, module, "bias"), 0))
    return refs


def _norm(tree, module: str) -> list[AxisRef]:
    """Per-channel norm parameters and (BatchNorm) running statistics."""
    refs = []
    for root, keys in ((PARAMS, ("scale", "bias")), (STATE, ("mean", "var"))):
        present = _module(tree, root, module)
        refs += [AxisRef(_path(root, module, k), 0) for k in keys if k in present]
    return refs


def _in(module: str, axis: int, inner: int = 1) -> AxisRef:
    """A layer's input axis (a kernel axis) reading the permuted units."""
    return AxisRef(_path(PARAMS, module, "kernel"), axis, inner)


def _spec(axes: dict[str, list[AxisRef]], tree) -> PermutationSpec:
    sizes = {}
    for name, refs in axes.items():
        r = refs[0]  # every oracle lists an output (unblocked) axis first
        leaf = tree[r.path[0]]
        for key in r.path[1:]:
            leaf = leaf[key]
        sizes[name] = leaf.shape[r.axis]
    return PermutationSpec(sizes, {n: tuple(rs) for n, rs in axes.items()})


def mlp_spec(tree) -> PermutationSpec:
    """MLP: dense{i} outputs feed dense{i+1} (the last one feeds `head`)."""
    depth = sum(1 for k in tree[PARAMS] if k.startswith("dense"))
    axes = {}
    for i in range(depth):
        consumer = f"dense{i + 1}" if i + 1 < depth else "head"
        axes[f"P_dense{i}"] = [*_out(tree, f"dense{i}", 1), _in(consumer, 0)]
    return _spec(axes, tree)


def cnn_spec(tree) -> PermutationSpec:
    """CNN: conv0 -> conv1 -> flatten (NHWC, channel fastest) -> dense -> head."""
    return _spec(
        {
            "P_conv0": [*_out(tree, "conv0", 3), *_norm(tree, "norm0"), _in("conv1", 2)],
            # The flattened axis is (H*W, C) with C fastest: a blocked entry, inner = 1.
            "P_conv1": [*_out(tree, "conv1", 3), *_norm(tree, "norm1"), _in("dense", 0, inner=1)],
            "P_dense": [*_out(tree, "dense", 1), _in("head", 0)],
        },
        tree,
    )


def vgg_spec(tree) -> PermutationSpec:
    """VGG: a chain of convs (pooling keeps channels), global average pool, head."""
    n = sum(1 for k in tree[PARAMS] if k.startswith("conv"))
    axes = {}
    for i in range(n):
        consumer = _in(f"conv{i + 1}", 2) if i + 1 < n else _in("head", 0)
        axes[f"P_conv{i}"] = [*_out(tree, f"conv{i}", 3), *_norm(tree, f"norm{i}"), consumer]
    return _spec(axes, tree)


def resnet20_spec(tree) -> PermutationSpec:
    """ResNet-20: one permutation per stage's residual stream, one inside each block.

    The stream of stage s is written by the stem (s=0), every block's conv1/norm1 and
    projection shortcut of that stage, and read by the blocks that take it as input
    (their conv0 and projection shortcut) and finally by the head.
    """
    blocks = sorted(k for k in tree[PARAMS] if k[:1] == "s" and k[1:2].isdigit())
    stages = sorted({int(k[1]) for k in blocks})
    axes: dict[str, list[AxisRef]] = {f"P_stage{s}": [] for s in stages}
    axes["P_stage0"] += [_in("stem_conv", 3), *_norm(tree, "stem_norm")]
    for name in blocks:
        s, b = int(name[1]), int(name[3:])
        source = s if (b > 0 or s == 0) else s - 1
        has_shortcut = "shortcut_conv" in tree[PARAMS][name]
        axes[f"P_stage{s}"] += [_in(f"{name}/conv1", 3), *_norm(tree, f"{name}/norm1")]
        if has_shortcut:
            axes[f"P_stage{s}"] += [
                _in(f"{name}/shortcut_conv", 3),
                *_norm(tree, f"{name}/shortcut_norm"),
            ]
            axes[f"P_stage{source}"].append(_in(f"{name}/shortcut_conv", 2))
        axes[f"P_stage{source}"].append(_in(f"{name}/conv0", 2))
        axes[f"P_{name}"] = [
            _in(f"{name}/conv0", 3),
            *_norm(tree, f"{name}/norm0"),
            _in(f"{name}/conv1", 2),
        ]
    axes[f"P_stage{stages[-1]}"].append(_in("head", 0))
    return _spec(axes, tree)


def oracle_spec(model_name: str, tree) -> PermutationSpec:
    """The oracle for an `lmc.models` name ('mlp', 'cnn', 'vgg11', 'vgg16', 'resnet20')."""
    if model_name == "mlp":
        return mlp_spec(tree)
    if model_name == "cnn":
        return cnn_spec(tree)
    if model_name.startswith("vgg"):
        return vgg_spec(tree)
    if model_name == "resnet20":
        return resnet20_spec(tree)
    raise ValueError(f"no oracle spec for {model_name!r}")
