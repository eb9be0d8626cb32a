"""On-device augmentation keyed by (aug_seed, step): random crop with padding + flip.

Runs inside the jitted train step, so it costs no host time and is reproduced exactly
on resume. Children spawned with different aug seeds see different augmentations:
together with data order this is the "SGD noise" of Frankle et al. (2020).
"""

import jax
import jax.numpy as jnp


def crop_and_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Per-image random crop (zero padding of `pad` pixels) and horizontal flip. NHWC."""
    n, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)
