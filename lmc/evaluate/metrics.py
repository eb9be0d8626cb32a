"""Per-example (or per-token) metrics, and the quantities derived from mean losses.

Training's loss, train-time evaluation and interpolation curves all use these, so a
"test loss" means the same thing in metrics.jsonl and in results.json.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example (or per-token) softmax cross-entropy in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def wrong(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1 where the arg-max prediction misses the label (per example or per token)."""
    return jnp.argmax(logits, axis=-1) != labels


def perplexity(loss: float) -> float:
    """exp(mean per-token loss); capped so a diverged model reports a huge finite value."""
    return math.exp(min(float(loss), 700.0))


def bits_per_byte(loss: float, bytes_per_token: float = 1.0) -> float:
    """Nats per token -> bits per byte (byte-level models: one token is one byte; a
    tokenizer's tokens hold `bytes_per_token` bytes of text on average)."""
    return float(loss) / math.log(2) / bytes_per_token


def language_model_metrics(metrics: dict, bytes_per_token: float = 1.0) -> dict:
    """`metrics` plus `<split>_perplexity` and `<split>_bits_per_byte` for every
    `<split>_loss` (the per-token language-model view of the same numbers;
    `bytes_per_token`: see `bits_per_byte`)."""
    out = dict(metrics)
    for key, value in metrics.items():
        if key.endswith("_loss"):
            split = key[: -len("_loss")]
            out[f"{split}_perplexity"] = perplexity(value)
            out[f"{split}_bits_per_byte"] = bits_per_byte(value, bytes_per_token)
    return out


def domain_metrics(flat: dict, domains) -> dict:
    """Per-domain splits of one evaluation -> {domain: {loss, perplexity, bits_per_byte,
    error}} plus their "mean" (e.g. held-out code and prose of a language model)."""
    out = {}
    for d in domains:
        loss = flat[f"{d}_loss"]
        out[d] = {"loss": loss, "perplexity": perplexity(loss),
                  "bits_per_byte": bits_per_byte(loss), "error": flat[f"{d}_error"]}  # fmt: skip
    mean_loss = sum(out[d]["loss"] for d in domains) / len(domains)
    out["mean"] = {
        "loss": mean_loss,
        "perplexity": perplexity(mean_loss),
        "bits_per_byte": bits_per_byte(mean_loss),
        "error": sum(out[d]["error"] for d in domains) / len(domains),
    }
    return out
