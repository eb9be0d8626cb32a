"""Progress on stderr: a live bar on a terminal; elsewhere (CI, logs, `nohup`), one line
every `LOG_EVERY_S` seconds with the step, rate and ETA, and a line per report."""

from __future__ import annotations

import sys
import time

# Often enough that a log shows a long run is alive, rarely enough to stay readable.
LOG_EVERY_S = 30.0


class Progress:
    def __init__(self, name: str, start: int, total: int, enabled: bool = True,
                 log_every_s: float = LOG_EVERY_S, clock=time.perf_counter):  # fmt: skip
        self.name, self.start, self.total = name, start, total
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.clock, self.log_every_s = clock, log_every_s
        self.t0 = clock()
        self.last_draw = 0.0
        self.last_line = self.t0

    def update(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not self.tty:
            if now - self.last_line >= self.log_every_s or step >= self.total:
                self.last_line = now
                rate, eta = self._rate_eta(step, now)
                self.report(f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%), "
                            f"{rate:.1f} it/s, eta {_duration(eta)} {info}".rstrip())  # fmt: skip
            return
        if now - self.last_draw < 0.2 and step < self.total:
            return
        self.last_draw = now
        done = (step - self.start) / max(self.total - self.start, 1)
        rate, eta = self._rate_eta(step, now)
        bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
        sys.stderr.write(
            f"\r{self.name} [{bar}] {step}/{self.total} {rate:.1f} it/s eta {eta:.0f}s {info}\x1b[K"
        )
        sys.stderr.flush()

    def _rate_eta(self, step: int, now: float) -> tuple[float, float]:
        """Steps per second since this run (re)started, and the seconds left at it."""
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        return rate, (self.total - step) / rate if rate > 0 else float("inf")

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


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
