"""The persistent compilation cache: where it goes, how to turn it off, and reuse."""

import os
import subprocess
import sys

import pytest

from lmc.runtime import compilation_cache


@pytest.fixture
def updates(monkeypatch):
    """Record jax.config updates instead of changing this process's JAX config."""
    seen = {}
    monkeypatch.setattr(compilation_cache.jax.config, "update", seen.__setitem__)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    return seen


def test_directory_from_env_or_default(updates, monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "cache"))
    assert compilation_cache.enable() == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()
    assert updates["jax_compilation_cache_dir"] == str(tmp_path / "cache")
    assert updates["jax_persistent_cache_min_compile_time_secs"] == 0.0
    monkeypatch.delenv(compilation_cache.ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation_cache.enable() == str(tmp_path / ".cache" / "lmc" / "jax")


@pytest.mark.parametrize("off", ["off", "0", "none"])
def test_can_be_turned_off(updates, monkeypatch, off):
    monkeypatch.setenv(compilation_cache.ENV, off)
    assert compilation_cache.enable() is None
    assert updates == {}


def test_jax_setting_is_respected_and_unwritable_dir_is_not_fatal(updates, monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation_cache.enable() == str(tmp_path / "mine")
    assert updates == {}
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert compilation_cache.enable(blocker / "cache") is None
    assert updates == {}


def test_a_second_process_loads_compiled_programs(tmp_path):
    """What the cache is for: the next `lmc` process finds the executables on disk."""
    script = (
        "import jax, jax.numpy as jnp\n"
        "from lmc.runtime import compilation_cache\n"
        "compilation_cache.enable()\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.arange(7.0)).sum()))\n"
    )
    env = {**os.environ, compilation_cache.ENV: str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    outs = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        outs.append(run.stdout)
        if not outs[1:]:
            entries = set(os.listdir(tmp_path / "cache"))
            assert entries, "nothing was written to the cache"
    assert outs[0] == outs[1]
    assert set(os.listdir(tmp_path / "cache")) == entries  # the second run compiled nothing new
