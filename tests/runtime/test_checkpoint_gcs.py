"""Checkpoints in a local directory and on gs:// (the GCS emulator: Orbax, tensorstore's
gcs driver and gcsfs against a real GCS JSON API): save, restore, the content digest,
the corrupt-step quarantine and the cleanup of unfinished steps."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmc.runtime import io
from lmc.runtime.checkpoint import Checkpointer

pytest_plugins = ["gcs_emulator"]  # the gcs_root and workroot fixtures


def _state(step: int) -> dict:
    return {
        "params": {"w": jnp.arange(12.0).reshape(3, 4) * step, "b": jnp.full((4,), float(step))},
        "model_state": {},
        "step": jnp.int32(step),
    }


def _equal(a, b):
    np.testing.assert_array_equal(np.asarray(a["params"]["w"]), np.asarray(b["params"]["w"]))
    np.testing.assert_array_equal(np.asarray(a["params"]["b"]), np.asarray(b["params"]["b"]))
    assert int(a["step"]) == int(b["step"])


def _saved(root: str, steps=(1, 2)) -> Checkpointer:
    ckpt = Checkpointer(f"{root}/run/checkpoints", every_steps=1, max_to_keep=5)
    for s in steps:
        assert ckpt.save(s, _state(s))
    return ckpt


def test_save_and_restore(workroot):
    ckpt = _saved(workroot)
    assert ckpt.steps() == [1, 2]
    step, state = ckpt.restore_latest()
    assert step == 2
    _equal(state, _state(2))
    _equal(ckpt.restore(1), _state(1))
    assert io.exists(f"{workroot}/run/checkpoint_digests/2.sha256")
    ckpt.close()
    # A fresh reader (another process or a resumed run) sees the same steps.
    reader = Checkpointer(f"{workroot}/run/checkpoints", every_steps=1, read_only=True)
    assert reader.steps() == [1, 2]
    _equal(reader.restore_latest()[1], _state(2))
    reader.close()


def test_changed_bytes_are_caught_and_the_step_quarantined(workroot, caplog):
    ckpt = _saved(workroot)
    step_dir = f"{workroot}/run/checkpoints/2"
    victim = max((f for f in io.find(step_dir) if "/d/" in f), key=lambda f: len(io.read_bytes(f)))
    raw = bytearray(io.read_bytes(victim))
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(16)  # same size, other bytes
    io.write_bytes_atomic(victim, bytes(raw), any_process=True)

    step, state = ckpt.restore_latest()
    assert step == 1
    _equal(state, _state(1))
    assert "checkpoint step 2" in caplog.text
    assert not io.exists(step_dir)
    assert io.exists(f"{workroot}/run/corrupt_checkpoints/2/commit_success.txt") or io.exists(
        f"{workroot}/run/corrupt_checkpoints/2/_CHECKPOINT_METADATA"
    )
    assert ckpt.steps() == [1]
    ckpt.close()


def test_unfinished_steps_are_cleaned_up_on_open(workroot):
    _saved(workroot, steps=(1,)).close()
    ckdir = f"{workroot}/run/checkpoints"
    # What a crash mid-save leaves: Orbax's temp directory (local style), and on an
    # object store a step directory without its commit_success.txt marker.
    io.write_bytes_atomic(f"{ckdir}/2.orbax-checkpoint-tmp-1234/junk", b"x", any_process=True)
    if io.is_remote(workroot):
        io.write_bytes_atomic(f"{ckdir}/3/default/junk", b"x", any_process=True)
    ckpt = Checkpointer(ckdir, every_steps=1)
    assert ckpt.steps() == [1]
    assert io.listdir(ckdir) == ["1"]
    _equal(ckpt.restore_latest()[1], _state(1))
    ckpt.close()


@pytest.mark.parametrize("damage", ["delete_data", "truncate_manifest"])
def test_unreadable_latest_step_falls_back(gcs_root, damage):
    ckpt = _saved(gcs_root)
    step_dir = f"{gcs_root}/run/checkpoints/2/default"
    if damage == "delete_data":
        for f in io.find(step_dir):
            if "/d/" in f:
                io.remove(f)
    else:
        manifest = f"{step_dir}/manifest.ocdbt"
        io.write_bytes_atomic(manifest, io.read_bytes(manifest)[:10], any_process=True)
    step, state = ckpt.restore_latest()
    assert step == 1
    _equal(state, _state(1))
    assert io.is_dir(f"{gcs_root}/run/corrupt_checkpoints/2")
    ckpt.close()
