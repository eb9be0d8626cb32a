"""Test setup: 8 fake CPU devices (set before JAX initializes) and shared fixtures."""

import logging
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

import pytest  # noqa: E402
from helpers import small_config  # noqa: E402  (also puts the repo root on sys.path)

from lmc.runtime import compilation_cache  # noqa: E402

compilation_cache.enable()


@pytest.fixture
def tiny_config():
    return small_config()


@pytest.fixture
def caplog(caplog):
    """pytest's caplog, also seeing lmc's logs after an in-process `lmc run` earlier in
    this worker stopped them at the "lmc" logger (lmc.cli.flags.quiet_libraries):
    caplog listens at the root. Which tests share a worker changes with the suite, so
    every caplog user gets this, not only the ones that happened to fail."""
    logger = logging.getLogger("lmc")
    saved, logger.propagate = logger.propagate, True
    yield caplog
    logger.propagate = saved
