"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST) read straight from disk.

TFDS's builders check upstream checksums, which Debian's recompressed
`dataset-fashion-mnist` files fail, so we parse the IDX format ourselves.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from lmc.data.dataset import Dataset, normalize
from lmc.errors import UserError

# name -> (env var overriding the directory, default directory, how to get it)
SOURCES = {
    "fashion_mnist": (
        "LMC_FASHION_MNIST_DIR",
        "/usr/share/datasets/fashion-mnist",
        "on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; otherwise download the four "
        "*-idx?-ubyte.gz files from github.com/zalandoresearch/fashion-mnist",
    ),
    "mnist": (
        "LMC_MNIST_DIR",
        None,
        "download the four *-idx?-ubyte.gz files of MNIST into a directory",
    ),
    "kmnist": (
        "LMC_KMNIST_DIR",
        None,
        "download the four *-idx?-ubyte.gz files from github.com/rois-codh/kmnist",
    ),
}

FLIPPABLE = ("fashion_mnist",)

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), checking magic number and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e} (is it truncated or not gzip?)") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(
            f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'} "
            "(expected 0x0000080N for unsigned-byte data)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header} bytes; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(stem)


def resolve_dir(name: str, directory: str | None) -> Path:
    env_var, default, how = SOURCES[name]
    chosen = directory or os.environ.get(env_var) or default
    if chosen is None:
        raise UserError(
            f"dataset {name!r} needs a directory: set config.data.dir or ${env_var}. To get it, {how}."
        )
    return Path(chosen)


def load_idx_dataset(name: str, directory: str | None = None) -> Dataset:
    path = resolve_dir(name, directory)
    env_var, _, how = SOURCES[name]
    if not path.is_dir():
        raise UserError(
            f"dataset {name!r}: directory {path} does not exist. To get it, {how}; "
            f"or point config.data.dir / ${env_var} at a directory holding the IDX files."
        )
    arrays = {}
    for key, stem in _FILES.items():
        try:
            arrays[key] = read_idx(_find(path, stem))
        except FileNotFoundError:
            raise UserError(
                f"dataset {name!r}: {path} has no {stem}.gz (nor {stem}). Expected the four "
                f"files {', '.join(s + '.gz' for s in _FILES.values())}. To get them, {how}."
            ) from None
    for split in ("train", "test"):
        nx, ny = len(arrays[f"{split}_x"]), len(arrays[f"{split}_y"])
        if nx != ny:
            raise UserError(
                f"dataset {name!r} in {path}: {split} split has {nx} images but {ny} labels"
            )
    train_x, test_x = normalize(arrays["train_x"][..., None], arrays["test_x"][..., None])
    return Dataset(
        name,
        train_x,
        arrays["train_y"].astype(np.int32),
        test_x,
        arrays["test_y"].astype(np.int32),
        num_classes=int(arrays["train_y"].max()) + 1,
        # Clothing is left-right symmetric, so crop + flip (the CIFAR recipe) applies;
        # digits and characters are not, so MNIST and KMNIST stay unaugmented.
        augmentable=name in FLIPPABLE,
    )
