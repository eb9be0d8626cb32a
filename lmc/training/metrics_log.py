"""`metrics.jsonl`: one JSON line per logged step, written by process 0, flushed per line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax


class MetricsWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint we resume from), so
        a resumed run's metrics file equals an uninterrupted run's."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past every step."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")
