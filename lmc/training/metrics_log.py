"""`metrics.jsonl`: one JSON line per logged step, written by process 0 through `lmc.runtime.io`
(local files: appended and fsync'd per line; object stores: the object rewritten, at
most every few seconds and always before a checkpoint is saved)."""

from __future__ import annotations

import json

import jax

from lmc.runtime import io, tracking


class MetricsWriter:
    def __init__(self, path: io.PathLike):
        self.path = io.path(path)
        self.enabled = jax.process_index() == 0
        self._lines: io.LineWriter | None = None

    def _writer(self) -> io.LineWriter:
        if self._lines is None:
            self._lines = io.LineWriter(self.path, writer=self.enabled)
        return self._lines

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._writer().write(json.dumps(record))
        tracking.current().log_metrics(self.path, record)  # copies for TensorBoard, W&B

    def flush(self) -> None:
        """Make every line so far durable (before a checkpoint: a resumed run drops the
        lines after its checkpoint, and must not miss any before it)."""
        if self._lines is not None:
            self._lines.flush()

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint we resume from), so
        a resumed run's metrics file equals an uninterrupted run's."""
        if not self.enabled:
            return
        self.close()  # the writer caches the object's content on object stores
        with io.os_errors(self.path, "reading it"):
            lines = io.read_lines(self.path)
        if not lines and not io.exists(self.path):
            return
        kept = [line for line in lines if _step_of(line) <= step]
        io.write_text_atomic(self.path, "".join(line + "\n" for line in kept), any_process=True)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past every step."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")
