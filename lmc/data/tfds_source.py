"""Any TFDS image-classification dataset already prepared under TFDS_DATA_DIR.

Read with `tfds.data_source` (random access over ArrayRecord files, no TensorFlow at
train time). Preparing needs TensorFlow and internet once, on any machine:

    pip install tensorflow tensorflow-datasets
    python -c "import tensorflow_datasets as tfds; \
tfds.builder('cifar10', file_format='array_record').download_and_prepare()"

then copy `~/tensorflow_datasets` (or $TFDS_DATA_DIR) to the training machines.
"""

from __future__ import annotations

import os

import numpy as np

from lmc.data.dataset import Dataset, normalize
from lmc.errors import UserError

PREPARE_HINT = (
    "prepare it once on a machine with internet: `pip install tensorflow tensorflow-datasets && "
    "python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
    "file_format='array_record').download_and_prepare()\"`, then set $TFDS_DATA_DIR"
)


def _to_arrays(source, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images, labels = [], []
    for i in range(n):
        example = source[i]
        images.append(np.asarray(example[image_key]))
        labels.append(int(example[label_key]))
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def load_tfds(
    name: str,
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    train_split: str = "train",
    test_split: str = "test",
) -> Dataset:
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        sources = tfds.data_source(
            name, split=[train_split, test_split], data_dir=data_dir, download=False
        )
    except Exception as e:  # TFDS raises a zoo of types for "not prepared"/"unknown".
        raise UserError(
            f"TFDS dataset {name!r} is not available under {data_dir or '~/tensorflow_datasets'}: "
            f"{type(e).__name__}: {e}. To " + PREPARE_HINT.format(name=name) + "."
        ) from e
    train_x, train_y = _to_arrays(sources[0], image_key, label_key)
    test_x, test_y = _to_arrays(sources[1], image_key, label_key)
    if train_x.ndim == 3:
        train_x, test_x = train_x[..., None], test_x[..., None]
    num_classes = builder.info.features[label_key].num_classes
    train_x, test_x = normalize(train_x, test_x)
    natural = train_x.shape[-1] == 3 and train_x.shape[1] >= 32
    return Dataset(
        f"tfds:{name}", train_x, train_y, test_x, test_y, num_classes, augmentable=natural
    )
