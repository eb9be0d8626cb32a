"""Test setup: 8 fake CPU devices (set before JAX initializes) and shared fixtures."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()

# One compilation cache for the whole session (xdist workers and the `lmc`
# subprocesses share it), kept out of the user's ~/.cache.
os.environ.setdefault(
    "LMC_COMPILATION_CACHE",
    os.path.join(tempfile.gettempdir(), f"lmc-test-compilation-cache-{os.getuid()}"),
)

import configs_path  # noqa: E402,F401  (puts the repo root on sys.path)
import ml_collections  # noqa: E402
import pytest  # noqa: E402

from lmc.runtime import compilation_cache  # noqa: E402

compilation_cache.enable()


def small_config(**overrides) -> ml_collections.ConfigDict:
    """The default config shrunk to run in seconds on synthetic data."""
    from configs import default

    c = default.get_config()
    c.data.name = "synthetic"
    c.model.width = 32
    c.model.depth = 2
    c.batch_size = 32
    c.num_steps = 40
    c.progress = False
    c.eval.num_alphas = 5
    c.eval.train_subset = 256
    c.eval.batch_size = 128
    c.align.max_iter = 20
    # One device: the 8 fake CPU devices would make every tiny test 8-way data
    # parallel (4x the CPU time); sharding tests build their own meshes.
    c.mesh.data = 1
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


@pytest.fixture
def tiny_config():
    return small_config()
