"""2-D convolution with a cache-friendly weight gradient on CPU backends.

XLA:CPU computes a convolution's weight gradient as one "backward filter" convolution
over the whole batch. On a machine with little memory bandwidth (this project's 2-core
development VM) that single op was the largest cost of a ResNet-20 train step, several
times the layer's forward pass and slower than PyTorch's whole forward+backward of it.

The same gradient, computed as one (C_in x C_out) matmul per kernel tap over batch
chunks of about 1 MiB (`lax.scan`, so each chunk's working set stays in cache), is
several times faster (benchmarks/README.md, `python benchmarks/run.py --only conv_grad`).
The forward pass and the input gradient are XLA's own: they were already on par with
PyTorch. On GPU/TPU nothing changes (cuDNN / the TPU compiler handle this well).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)`); it takes the custom path only for plain NHWC /
HWIO convolutions (any stride and padding, no dilation, no groups) on a CPU backend,
with inputs of at least TAPS_MIN_BYTES. Gradients agree with XLA's to float32
rounding, and forward mode (`jax.jvp`, Hessian-vector products) works as before
(tests/models/test_conv.py).

The tap gradient's `linear_call` has no batching rule in JAX, so a gradient taken
under `jax.vmap` (a vmapped population of siblings, `lmc.training.population`) must
be traced inside `weight_grad_path("xla")`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero, linear_call

# Batch chunk for the weight gradient: about this many bytes of input per chunk.
CHUNK_BYTES = 1 << 20
# Inputs smaller than this keep XLA's gradient: it is as fast or faster while the
# whole input fits in cache (benchmarks/README.md has the measurement).
TAPS_MIN_BYTES = 1 << 20
# "auto" (tap gradient on CPU backends only), "taps" (always) or "xla" (never).
WEIGHT_GRAD = "auto"

_NHWC = ("NHWC", "HWIO", "NHWC")
# Set by `weight_grad_path` while a function is traced; overrides WEIGHT_GRAD.
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("weight_grad", default=None)


@contextlib.contextmanager
def weight_grad_path(path: str):
    """Convolutions traced inside this block use `path` ("auto", "taps" or "xla") for
    their weight gradient, whatever WEIGHT_GRAD says."""
    if path not in ("auto", "taps", "xla"):
        raise ValueError(f"weight gradient path must be auto, taps or xla, got {path!r}")
    token = _PATH.set(path)
    try:
        yield
    finally:
        _PATH.reset(token)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated`, with the tap weight gradient where it applies."""
    pads = _plain_nhwc_pads(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers
    )
    if (
        pads is None
        or feature_group_count != 1
        or batch_group_count != 1
        or preferred_element_type is not None
        or not _use_taps(lhs)
    ):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    return conv_tap_grad(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


def _use_taps(x) -> bool:
    path = _PATH.get() or WEIGHT_GRAD
    if path == "auto":
        return jax.default_backend() == "cpu" and x.size * x.dtype.itemsize >= TAPS_MIN_BYTES
    return path == "taps"


def _plain_nhwc_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers):
    """Explicit non-negative pads if this is a plain 2-D NHWC/HWIO conv, else None."""
    if lhs.ndim != 4 or rhs.ndim != 4 or len(strides) != 2:
        return None
    if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return None
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or _NHWC)
    if got != want:
        return None
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if all(p >= 0 for pair in pads for p in pair) else None


def _conv(x, w, strides, pads, precision):
    return lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def conv_tap_grad(x, w, strides, pads, precision=None):
    """NHWC x HWIO convolution whose weight gradient is computed tap by tap.

    A custom JVP (not VJP), so forward mode (`jax.jvp`, Hessian-vector products) works
    too: the tangent in w is a `linear_call` whose transpose is `weight_grad`, and the
    tangent in x is XLA's own conv (its transpose, the input gradient, is fast).
    """
    return _conv(x, w, strides, pads, precision)


@functools.partial(conv_tap_grad.defjvp, symbolic_zeros=True)
def _jvp(strides, pads, precision, primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    y = _conv(x, w, strides, pads, precision)
    terms = []  # JAX calls the rule only when x or w is perturbed
    if not isinstance(x_dot, SymbolicZero):
        terms.append(_conv(x_dot, w, strides, pads, precision))
    if not isinstance(w_dot, SymbolicZero):

        def in_w(x, w_dot):
            return _conv(x, w_dot, strides, pads, precision)

        def in_w_transposed(x, g):
            return weight_grad(x, g, w.shape, strides, pads).astype(w.dtype)

        terms.append(linear_call(in_w, in_w_transposed, x, w_dot))
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def weight_grad(x, g, w_shape, strides, pads):
    """d(sum g * conv(x, w)) / dw: for tap (i, j), x's strided window at (i, j) times g.

    Runs over batch chunks of about CHUNK_BYTES in a `lax.scan`, accumulating in float32.
    """
    batch = x.shape[0]
    per_image = x[0].size * x.dtype.itemsize
    chunk = _largest_divisor_at_most(batch, max(1, CHUNK_BYTES // per_image))
    if chunk == batch:
        return _taps(x, g, w_shape, strides, pads)
    xs = x.reshape(batch // chunk, chunk, *x.shape[1:])
    gs = g.reshape(batch // chunk, chunk, *g.shape[1:])

    def add_chunk(total, xg):
        return total + _taps(*xg, w_shape, strides, pads), None

    total, _ = lax.scan(add_chunk, jnp.zeros(w_shape, jnp.float32), (xs, gs))
    return total


def _taps(x, g, w_shape, strides, pads):
    kh, kw, c_in, c_out = w_shape
    sh, sw = strides
    n, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    g_rows = g.reshape(-1, c_out)
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c_in),
                (1, sh, sw, 1),
            )
            taps.append(
                lax.dot_general(
                    window.reshape(-1, c_in),
                    g_rows,
                    (((0,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32,
                )
            )
    return jnp.stack(taps).reshape(w_shape)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
