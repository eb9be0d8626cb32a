"""Progress on stderr: a live bar on a terminal, a line per report elsewhere (CI, logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, name: str, start: int, total: int, enabled: bool = True):
        self.name, self.start, self.total = name, start, total
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.last_draw = 0.0

    def update(self, step: int, info: str = "") -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self.last_draw < 0.2 and step < self.total:
            return
        self.last_draw = now
        done = (step - self.start) / max(self.total - self.start, 1)
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
        sys.stderr.write(
            f"\r{self.name} [{bar}] {step}/{self.total} {rate:.1f} it/s eta {eta:.0f}s {info}\x1b[K"
        )
        sys.stderr.flush()

    def report(self, line: str, name: str | None = None) -> None:
        """A line that stays (evaluations); shown on terminals and in logs alike."""
        if not self.enabled:
            return
        prefix = "\r\x1b[K" if self.tty else ""
        sys.stderr.write(f"{prefix}{name or self.name}: {line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
