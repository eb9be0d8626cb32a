"""Checkpoint import and export (`lmc.models.hub`) against the reference implementation.

The fixtures under tests/fixtures/hub/ are tiny random-weight checkpoints and the
logits Hugging Face transformers computed for them (tests/fixtures/make_hub_fixtures.py
regenerates them); the suite needs no torch.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from helpers import ROOT

from lmc import align
from lmc.errors import UserError
from lmc.models import hub

FIXTURES = ROOT / "tests" / "fixtures" / "hub"
FAMILIES = ("gpt2", "gpt_neox", "llama")


def golden(family):
    return np.load(FIXTURES / family / "golden.npz")


def logits(ckpt, tree, tokens):
    return np.asarray(ckpt.model.apply(tree["params"], {}, tokens, False)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_reference_implementation(family):
    ckpt = hub.load(FIXTURES / family)
    g = golden(family)
    assert ckpt.arch.family == family
    np.testing.assert_allclose(logits(ckpt, ckpt.tree, g["tokens"]), g["logits"], atol=2e-5)
    # the tokenizer of the same directory encodes as the reference's did
    assert hub.load_tokenizer(FIXTURES / family).encode(str(g["text"])).ids == list(g["ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_export_writes_the_files_tensors_back_unchanged(family, tmp_path):
    ckpt = hub.load(FIXTURES / family)
    hub.save(tmp_path / "out", ckpt.tree, like=ckpt)
    want, got = hub.read_tensors(FIXTURES / family), hub.read_tensors(tmp_path / "out")
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"
    assert (tmp_path / "out" / "tokenizer.json").is_file()


# Free permutations the tracer must report (names aside): sizes per block, and the one
# residual-stream permutation. GPT-NeoX: heads (4), value dims per head (8), MLP (64);
# rotary pins query/key dims; its parallel residual puts ln1, ln2 and both writes on
# the one residual permutation. Llama (GQA, 4 query heads on 2 kv heads): kv heads
# (2), query heads within a group (2), value dims (8), SwiGLU hidden (48, gate and up
# together).
EXPECTED_SIZES = {"gpt_neox": [4, 8, 64], "llama": [2, 2, 8, 48]}


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_traced_spec_covers_the_family_and_planted_permutations_are_undone(family, tmp_path):
    """Plant a random element of the traced spec in a copy of the checkpoint (the same
    function: the reference logits must still come out), align it back to the original
    by weight matching, export, reload: the original tensors and logits."""
    ckpt = hub.load(FIXTURES / family)
    g = golden(family)
    x = g["tokens"][:, :8]
    spec = align.spec_from_model(ckpt.model, x)
    sizes = sorted(spec.sizes.values())
    per_block = sorted(EXPECTED_SIZES[family] * ckpt.arch.depth + [ckpt.arch.width])
    assert sizes == per_block
    residual = [n for n, s in spec.sizes.items() if s == ckpt.arch.width]
    leaves = {"/".join(r.path) for r in spec.axes[residual[0]]}
    assert {"params/block0/ln1/scale", "params/block0/ln2/scale", "params/ln_f/scale"} <= leaves
    report = align.check(ckpt.model, spec, ckpt.tree, x)
    assert report.invariant, str(report)

    perms = align.random_permutations(spec, jax.random.key(3), ckpt.tree)
    planted = align.apply_permutation(spec, perms, ckpt.tree)
    assert not np.allclose(
        planted["params"]["block0"]["mlp"]["fc1"]["kernel"],
        ckpt.tree["params"]["block0"]["mlp"]["fc1"]["kernel"],
    )
    np.testing.assert_allclose(logits(ckpt, planted, g["tokens"]), g["logits"], atol=2e-5)
    found, _ = align.weight_matching(spec, ckpt.tree, planted, key=jax.random.key(0))
    aligned = align.apply_permutation(spec, found, planted)
    hub.save(tmp_path / "aligned", aligned, like=ckpt)
    back = hub.load(tmp_path / "aligned")
    np.testing.assert_allclose(logits(back, back.tree, g["tokens"]), g["logits"], atol=2e-5)
    want = hub.read_tensors(FIXTURES / family)
    got = hub.read_tensors(tmp_path / "aligned")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-7, err_msg=name)


def test_bad_checkpoints_are_user_errors_naming_the_culprit(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hub.load(tmp_path / "nowhere")
    d = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "gpt_neox", d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(UserError, match="model_type='bert'"):
        hub.load(d)
    (d / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match=r"gpt_neox.layers.2.input_layernorm.weight.*missing"):
        hub.load(d)
    (d / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(UserError, match="does not use"):
        hub.load(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match="neither model.safetensors"):
        hub.load(d)
    with pytest.raises(UserError, match="no tokenizer"):
        hub.load_tokenizer(tmp_path)


def test_half_precision_weights_load_as_float32(tmp_path):
    """A bfloat16 copy of the checkpoint (as most hub models are stored) loads as float32
    and computes the reference logits to bfloat16 rounding."""
    import ml_dtypes
    from safetensors.numpy import save_file

    d = tmp_path / "bf16"
    shutil.copytree(FIXTURES / "gpt_neox", d)
    tensors = hub.read_tensors(d)
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()},
              str(d / "model.safetensors"))  # fmt: skip
    ckpt = hub.load(d)
    leaf = ckpt.tree["params"]["block0"]["mlp"]["fc1"]["kernel"]
    assert leaf.dtype == np.float32
    g = golden("gpt_neox")
    np.testing.assert_allclose(logits(ckpt, ckpt.tree, g["tokens"]), g["logits"], atol=0.1)


def test_base_model_names_and_stale_buffers_of_older_gpt2_files_load(tmp_path):
    """The original GPT-2 checkpoints name tensors without the `transformer.` prefix and
    carry the causal-mask buffers older transformers saved; both load."""
    from safetensors.numpy import save_file

    d = tmp_path / "gpt2"
    shutil.copytree(FIXTURES / "gpt2", d)
    tensors = {k.removeprefix("transformer."): v for k, v in hub.read_tensors(d).items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    save_file(tensors, str(d / "model.safetensors"))
    ckpt = hub.load(d)
    g = golden("gpt2")
    np.testing.assert_allclose(logits(ckpt, ckpt.tree, g["tokens"]), g["logits"], atol=2e-5)


def test_orthogonal_recipe_undoes_a_planted_rotation_of_gpt_neox_and_refuses_tied_gpt2():
    """GPT-NeoX's final LayerNorm has a bias and its unembedding none: that bias stays
    on the stream and rotates with it. A planted element (heads, MLP units, a residual
    rotation, another gauge of the norms) is undone to the original tensors. GPT-2's
    unembedding is its embedding, read through a transpose: a UserError says why."""
    from lmc.align.continuous import orthogonal
    from lmc.align.tracing.trace import specs_from_model

    ckpt = hub.load(FIXTURES / "gpt_neox")
    g = golden("gpt_neox")
    x = g["tokens"][:, :8]
    params = ckpt.tree["params"]
    plain, spec = specs_from_model(ckpt.model, x)
    fn = lambda p, t: ckpt.model.apply(p, {}, t, False)[0]  # noqa: E731
    roles = orthogonal.roles(fn, plain.subtree("params"), params, x)
    assert any(n.kept_bias == ("ln_f", "bias") for n in roles.norms)
    rng = np.random.default_rng(7)
    pspec = spec.subtree("params")
    perms = align.random_permutations(pspec, jax.random.key(4), params)
    other = align.apply_permutation(pspec, perms, orthogonal.fold(roles, params))
    r = orthogonal.random_rotation(ckpt.arch.width, rng)
    other = orthogonal.rotate(roles, r, other)
    gauge = jax.tree.map(lambda a: (1 + rng.random(np.shape(a))).astype(np.float32), params)
    other = orthogonal.unfold(roles, other, gauge)
    np.testing.assert_allclose(fn(other, g["tokens"]), g["logits"], atol=1e-4)
    tree_b = {"params": other, "model_state": {}}
    aligned, _ = align.weight_matching_orthogonal(ckpt.model, ckpt.tree, tree_b, x, restarts=1)
    for (path, a), (_, b) in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves_with_path(aligned["params"]),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, atol=1e-4, err_msg=jax.tree_util.keystr(path))

    gpt2 = hub.load(FIXTURES / "gpt2")
    with pytest.raises(UserError, match="tied embedding"):
        align.weight_matching_orthogonal(gpt2.model, gpt2.tree, gpt2.tree, x)
