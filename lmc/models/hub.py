"""Checkpoints in the Hugging Face layout: load into lmc, export back.

    from lmc.models import hub
    ckpt = hub.load("pythia-70m-seed1")          # config.json + *.safetensors (sharded or not)
    logits, _ = ckpt.model.apply(ckpt.tree["params"], {}, tokens, False)
    tok = hub.load_tokenizer("pythia-70m-seed1")  # tokenizer.json (`tokenizers`)
    hub.save("aligned-b", aligned_tree, like=ckpt)  # loadable by transformers and lmc

Families (config.json `model_type`): `gpt2`, `gpt_neox` (Pythia, PolyPythia) and
`llama` (Llama 2, Llama 3 without rope scaling, TinyLlama, ...). The model is
`lmc.models.decoder.Decoder`, a flax.linen module behind lmc's `Model` interface, so
every evaluator, alignment method and experiment takes it; its parameters are a plain
nested dict in lmc's transformer layout (heads as their own axis, see
`lmc.models.decoder`). Weights load as float32 whatever their stored dtype; `save`
writes float32 `model.safetensors` with the source's config.json (dtype set to
float32) and tokenizer files, so an aligned or merged model opens in any tool that
reads the layout.

Each family is one table of tensor mappings (`_gpt2`, `_gpt_neox`, `_llama`): a
Hugging Face tensor and the lmc leaves it becomes, with the transform both ways, so
import and export cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmc.errors import UserError
from lmc.models.decoder import Arch, Decoder

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")  # fmt: skip
# Non-persistent buffers some transformers versions still wrote into checkpoints.
BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
           ".rotary_emb.inv_freq")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: `model` (lmc's interface), `tree` ({"params", "model_state"}),
    the parsed `arch`, the raw `config` (config.json) and the `directory` it came from
    (whose tokenizer files `save` copies; None for a fresh `init`)."""

    model: object
    tree: dict
    arch: Arch
    config: dict
    directory: Path | None


# ---- config.json -> Arch -------------------------------------------------------------
def read_config(directory) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise UserError(f"checkpoint directory {str(directory)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{path} is missing: a checkpoint in the Hugging Face layout has a config.json "
            "next to its *.safetensors"
        ) from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def _rope(cfg: dict, key: str, default):
    """A rotary setting from `rope_parameters` (transformers >= 5) or the top level."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if params.get("rope_type", "default") not in ("default", None):
        raise UserError(
            f"config.json rope_type={params['rope_type']!r}: only the default rotary "
            "embedding is implemented"
        )
    return params.get(key, cfg.get(key, default))


def _need(cfg: dict, directory, *keys):
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise UserError(f"{directory}/config.json lacks {', '.join(missing)}")
    return [cfg[k] for k in keys]


def arch_from_config(cfg: dict, directory="checkpoint") -> Arch:
    """The `Arch` of a Hugging Face config.json (dict)."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise UserError(
            f"{directory}/config.json has model_type={family!r}; lmc imports "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[family].arch(cfg, directory)


def _gpt2_arch(cfg, directory) -> Arch:
    vocab, d, depth, heads, positions = _need(
        cfg, directory, "vocab_size", "n_embd", "n_layer", "n_head", "n_positions"
    )
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise UserError(f"{directory}/config.json activation_function={act!r} is not supported")
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("scale_attn_weights") is False:
        raise UserError(f"{directory}/config.json: non-default GPT-2 attention scaling")
    return Arch("gpt2", vocab, d, depth, heads, heads, d // heads, cfg.get("n_inner") or 4 * d,
                "gelu" if act == "gelu" else "gelu_tanh", False, "layernorm",
                cfg.get("layer_norm_epsilon", 1e-5), positions, 0, 10000.0, False, True, True,
                True, cfg.get("tie_word_embeddings", True))  # fmt: skip


def _gpt_neox_arch(cfg, directory) -> Arch:
    vocab, d, depth, heads, hidden = _need(
        cfg, directory, "vocab_size", "hidden_size", "num_hidden_layers",
        "num_attention_heads", "intermediate_size",
    )  # fmt: skip
    hd = d // heads
    pct = _rope(cfg, "partial_rotary_factor", cfg.get("rotary_pct", 1.0))
    base = _rope(cfg, "rope_theta", cfg.get("rotary_emb_base", 10000.0))
    act = cfg.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        raise UserError(f"{directory}/config.json hidden_act={act!r} is not supported")
    bias = cfg.get("attention_bias", True)
    return Arch("gpt_neox", vocab, d, depth, heads, heads, hd, hidden,
                "gelu" if act == "gelu" else "gelu_tanh", False, "layernorm",
                cfg.get("layer_norm_eps", 1e-5), 0, int(hd * pct), float(base),
                cfg.get("use_parallel_residual", True), bias, bias, True,
                cfg.get("tie_word_embeddings", False))  # fmt: skip


def _llama_arch(cfg, directory) -> Arch:
    vocab, d, depth, heads, hidden = _need(
        cfg, directory, "vocab_size", "hidden_size", "num_hidden_layers",
        "num_attention_heads", "intermediate_size",
    )  # fmt: skip
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    if heads % kv:
        raise UserError(
            f"{directory}/config.json: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv}"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise UserError(f"{directory}/config.json hidden_act={cfg['hidden_act']!r}: need silu")
    bias = cfg.get("attention_bias", False)
    return Arch("llama", vocab, d, depth, heads, kv, hd, hidden, "silu", True, "rmsnorm",
                cfg.get("rms_norm_eps", 1e-6), 0, hd, float(_rope(cfg, "rope_theta", 10000.0)),
                False, bias, bias, cfg.get("mlp_bias", False),
                cfg.get("tie_word_embeddings", False))  # fmt: skip


# ---- tensor mappings -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Map:
    """One Hugging Face tensor `hf` <-> lmc leaves `lmc` (paths 'a/b/c'):
    `load(tensor) -> [leaf, ...]` and `save([leaf, ...]) -> tensor`."""

    hf: str
    lmc: tuple[str, ...]
    load: Callable
    save: Callable


def _same(hf, path):
    return Map(hf, (path,), lambda t: [t], lambda ls: ls[0])


def _linear(hf, path, shape=None):
    """torch Linear weight (out, in) <-> flax kernel (in, *shape) (shape: out split)."""

    def load(t):
        k = t.T
        return [k.reshape(k.shape[0], *shape) if shape else k]

    def save(leaves):
        k = leaves[0]
        return k.reshape(k.shape[0], -1).T

    return Map(hf, (path,), load, save)


def _linear_in(hf, path, shape):
    """torch Linear weight (out, in) <-> flax kernel (*shape, out) (shape: in split)."""
    return Map(hf, (path,), lambda t: [t.T.reshape(*shape, t.shape[0])],
               lambda ls: ls[0].reshape(-1, ls[0].shape[-1]).T)  # fmt: skip


def _split(hf, paths, shape, axis_first: bool, heads_major: bool):
    """A fused q/k/v tensor <-> three leaves. GPT-2's Conv1D (d, 3d) holds [q | k | v]
    along its last axis; GPT-NeoX's Linear (3d, d) holds per head [q_h, k_h, v_h].
    `shape` (heads, head_dim); bias tensors have no input axis."""
    h, hd = shape
    n = len(paths)

    def load(t):
        x = np.moveaxis(t, 0, -1) if axis_first else t  # (..., n*h*hd): the fused axis last
        split = (h, n, hd) if heads_major else (n, h, hd)
        x = x.reshape(*x.shape[:-1], *split)
        return list(np.moveaxis(x, -2 if heads_major else -3, 0))  # n x (..., h, hd)

    def save(leaves):
        x = np.stack(leaves, axis=-2 if heads_major else -3)
        x = x.reshape(*x.shape[:-3], n * h * hd)
        return np.moveaxis(x, -1, 0) if axis_first else x

    return Map(hf, tuple(paths), load, save)


def _norm(hf, path, bias: bool = True):
    maps = [_same(f"{hf}.weight", f"{path}/scale")]
    return maps + ([_same(f"{hf}.bias", f"{path}/bias")] if bias else [])


def _gpt2(a: Arch) -> list[Map]:
    hh = (a.heads, a.head_dim)
    maps = [_same("transformer.wte.weight", "embed/embedding"),
            _same("transformer.wpe.weight", "pos_embed")]  # fmt: skip
    for i in range(a.depth):
        p, b = f"transformer.h.{i}", f"block{i}"
        qkv = [f"{b}/attn/{n}" for n in ("query", "key", "value")]
        maps += _norm(f"{p}.ln_1", f"{b}/ln1") + _norm(f"{p}.ln_2", f"{b}/ln2")
        maps += [
            _split(f"{p}.attn.c_attn.weight", [f"{q}/kernel" for q in qkv], hh, False, False),
            _split(f"{p}.attn.c_attn.bias", [f"{q}/bias" for q in qkv], hh, False, False),
            Map(f"{p}.attn.c_proj.weight", (f"{b}/attn/out/kernel",),
                lambda t: [t.reshape(*hh, -1)], lambda ls: ls[0].reshape(-1, ls[0].shape[-1])),
            _same(f"{p}.attn.c_proj.bias", f"{b}/attn/out/bias"),
            _same(f"{p}.mlp.c_fc.weight", f"{b}/mlp/fc1/kernel"),
            _same(f"{p}.mlp.c_fc.bias", f"{b}/mlp/fc1/bias"),
            _same(f"{p}.mlp.c_proj.weight", f"{b}/mlp/fc2/kernel"),
            _same(f"{p}.mlp.c_proj.bias", f"{b}/mlp/fc2/bias"),
        ]  # fmt: skip
    maps += _norm("transformer.ln_f", "ln_f")
    if not a.tied_embeddings:
        maps.append(_linear("lm_head.weight", "head/kernel"))
    return maps


def _gpt_neox(a: Arch) -> list[Map]:
    hh = (a.heads, a.head_dim)
    maps = [_same("gpt_neox.embed_in.weight", "embed/embedding")]
    for i in range(a.depth):
        p, b = f"gpt_neox.layers.{i}", f"block{i}"
        qkv = [f"{b}/attn/{n}" for n in ("query", "key", "value")]
        maps += _norm(f"{p}.input_layernorm", f"{b}/ln1")
        maps += _norm(f"{p}.post_attention_layernorm", f"{b}/ln2")
        fused = f"{p}.attention.query_key_value"
        maps.append(_split(f"{fused}.weight", [f"{q}/kernel" for q in qkv], hh, True, True))
        if a.attn_bias:
            maps.append(_split(f"{fused}.bias", [f"{q}/bias" for q in qkv], hh, False, True))
            maps.append(_same(f"{p}.attention.dense.bias", f"{b}/attn/out/bias"))
        maps += [
            _linear_in(f"{p}.attention.dense.weight", f"{b}/attn/out/kernel", hh),
            _linear(f"{p}.mlp.dense_h_to_4h.weight", f"{b}/mlp/fc1/kernel"),
            _same(f"{p}.mlp.dense_h_to_4h.bias", f"{b}/mlp/fc1/bias"),
            _linear(f"{p}.mlp.dense_4h_to_h.weight", f"{b}/mlp/fc2/kernel"),
            _same(f"{p}.mlp.dense_4h_to_h.bias", f"{b}/mlp/fc2/bias"),
        ]
    maps += _norm("gpt_neox.final_layer_norm", "ln_f")
    if not a.tied_embeddings:
        maps.append(_linear("embed_out.weight", "head/kernel"))
    return maps


def _llama(a: Arch) -> list[Map]:
    maps = [_same("model.embed_tokens.weight", "embed/embedding")]
    for i in range(a.depth):
        p, b = f"model.layers.{i}", f"block{i}"
        maps += _norm(f"{p}.input_layernorm", f"{b}/ln1", bias=False)
        maps += _norm(f"{p}.post_attention_layernorm", f"{b}/ln2", bias=False)
        for hf, name, heads in (("q", "query", a.heads), ("k", "key", a.kv_heads),
                                ("v", "value", a.kv_heads)):  # fmt: skip
            shape = (heads, a.head_dim)
            maps.append(
                _linear(f"{p}.self_attn.{hf}_proj.weight", f"{b}/attn/{name}/kernel", shape)
            )
            if a.attn_bias:
                maps.append(Map(f"{p}.self_attn.{hf}_proj.bias", (f"{b}/attn/{name}/bias",),
                                lambda t, s=shape: [t.reshape(s)],
                                lambda ls: ls[0].reshape(-1)))  # fmt: skip
        maps.append(_linear_in(f"{p}.self_attn.o_proj.weight", f"{b}/attn/out/kernel",
                               (a.heads, a.head_dim)))  # fmt: skip
        if a.attn_out_bias:
            maps.append(_same(f"{p}.self_attn.o_proj.bias", f"{b}/attn/out/bias"))
        for hf, name in (("up", "fc1"), ("gate", "gate"), ("down", "fc2")):
            maps.append(_linear(f"{p}.mlp.{hf}_proj.weight", f"{b}/mlp/{name}/kernel"))
            if a.mlp_bias:
                maps.append(_same(f"{p}.mlp.{hf}_proj.bias", f"{b}/mlp/{name}/bias"))
    maps += _norm("model.norm", "ln_f", bias=False)
    if not a.tied_embeddings:
        maps.append(_linear("lm_head.weight", "head/kernel"))
    return maps


@dataclasses.dataclass(frozen=True)
class Family:
    arch: Callable
    maps: Callable
    prefix: str  # the base model's prefix, absent from base-model checkpoints


FAMILIES = {
    "gpt2": Family(_gpt2_arch, _gpt2, "transformer."),
    "gpt_neox": Family(_gpt_neox_arch, _gpt_neox, "gpt_neox."),
    "llama": Family(_llama_arch, _llama, "model."),
}


# ---- weights -------------------------------------------------------------------------
def weight_files(directory) -> list[Path]:
    """The checkpoint's safetensors files: the index's shards, or model.safetensors."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise UserError(f"{index} is not a safetensors index ({e})") from None
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise UserError(f"{index} lists shard(s) missing from {directory}: {missing}")
        return [directory / n for n in names]
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    hint = f" (found {found} but no {INDEX})" if found else ""
    torch_files = sorted(p.name for p in directory.glob("*.bin"))
    if torch_files and not found:
        hint = f" (it has PyTorch pickles {torch_files}: convert them to safetensors)"
    raise UserError(f"{directory} has neither {WEIGHTS} nor {INDEX}{hint}")


def read_tensors(directory) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, by Hugging Face name, as float32 numpy."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    out = {}
    for path in weight_files(directory):
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read {path} as safetensors ({e})") from None
        out.update({k: np.asarray(v, np.float32) for k, v in tensors.items()})
    return out


def to_params(tensors: dict, arch: Arch, directory="checkpoint") -> dict:
    """Hugging Face tensors -> lmc's nested params dict."""
    family = FAMILIES[arch.family]
    tensors = {k: v for k, v in tensors.items() if not k.endswith(BUFFERS)}
    maps = family.maps(arch)
    if not any(m.hf in tensors for m in maps):  # a base model: names without the prefix
        tensors = {family.prefix + k: v for k, v in tensors.items()}
    if arch.tied_embeddings:
        tensors.pop("lm_head.weight", None)  # some writers store the tied copy too
    flat = {}
    for m in maps:
        if m.hf not in tensors:
            raise UserError(
                f"{directory}: tensor {m.hf!r} is missing ({arch.family} checkpoint with "
                f"{arch.depth} layers per its config.json)"
            )
        leaves = m.load(tensors.pop(m.hf))
        flat.update(zip(m.lmc, leaves, strict=True))
    if tensors:
        extra = sorted(tensors)
        raise UserError(
            f"{directory}: {len(extra)} tensor(s) this {arch.family} config does not use, "
            f"e.g. {extra[:3]}; is config.json the one these weights were saved with?"
        )
    return _unflatten(flat)


def to_tensors(params: dict, arch: Arch) -> dict[str, np.ndarray]:
    """lmc's params -> Hugging Face tensors (float32, contiguous)."""
    flat = _flatten(params)
    out = {}
    for m in FAMILIES[arch.family].maps(arch):
        missing = [p for p in m.lmc if p not in flat]
        if missing:
            raise UserError(f"params lack {missing} (not a {arch.family} model of this config?)")
        out[m.hf] = np.ascontiguousarray(np.asarray(m.save([flat[p] for p in m.lmc]), np.float32))
    return out


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


# ---- public API ----------------------------------------------------------------------
def load_model(directory):
    """The architecture of a checkpoint directory as an `lmc.models.Model` (no weights)."""
    from lmc.models import Model

    cfg = read_config(directory)
    arch = arch_from_config(cfg, directory)
    return Model(f"hub:{arch.family}", Decoder(arch))


def load(directory) -> Checkpoint:
    """Model and weights of a checkpoint directory (config.json + safetensors)."""
    from lmc.models import Model

    directory = Path(directory)
    cfg = read_config(directory)
    arch = arch_from_config(cfg, directory)
    params = to_params(read_tensors(directory), arch, directory)
    return Checkpoint(
        Model(f"hub:{arch.family}", Decoder(arch)),
        {"params": params, "model_state": {}},
        arch,
        cfg,
        directory,
    )


def init(config: dict, seed: int, tokenizer_dir=None) -> Checkpoint:
    """A randomly initialized checkpoint of the architecture of `config` (a config.json
    dict), flax's default initializers with `seed`; `save` copies the tokenizer files
    of `tokenizer_dir`."""
    import jax

    from lmc.models import Model

    arch = arch_from_config(config)
    model = Model(f"hub:{arch.family}", Decoder(arch))
    params, _ = model.init(jax.random.key(seed), np.zeros((1, 2), np.int32))
    tree = {"params": jax_to_numpy(params), "model_state": {}}
    return Checkpoint(
        model, tree, arch, dict(config), Path(tokenizer_dir) if tokenizer_dir else None
    )


def load_tokenizer(directory):
    """The checkpoint's `tokenizers.Tokenizer` (its tokenizer.json)."""
    from lmc.data.tokenizer import load_tokenizer as load

    return load(directory)


def save(directory, tree, like: Checkpoint) -> Path:
    """Write `tree` (params, or {"params", "model_state"}) as a checkpoint of `like`'s
    architecture: float32 model.safetensors, `like`'s config.json (dtype float32) and
    its tokenizer files. The directory must be new or hold no weights yet."""
    from safetensors.numpy import save_file

    params = tree["params"] if isinstance(tree, dict) and "params" in tree else tree
    directory = Path(directory)
    if like.directory is not None and directory.resolve() == like.directory.resolve():
        raise UserError(f"hub.save: {directory} is the source checkpoint; write elsewhere")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (*directory.glob("*.safetensors"), directory / INDEX):
        stale.unlink(missing_ok=True)  # a previous export's shards must not linger
    tensors = to_tensors(jax_to_numpy(params), like.arch)
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS)
    cfg = {k: v for k, v in like.config.items() if k != "torch_dtype"}
    cfg["dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES if like.directory is not None else ():
        if (like.directory / name).is_file():
            shutil.copyfile(like.directory / name, directory / name)
    return directory


def jax_to_numpy(tree):
    import jax

    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
