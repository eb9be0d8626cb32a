"""Progress when stderr is not a terminal: a line every `log_every_s` with the step,
rate and ETA, and one at the end (a long run in a log is visibly alive)."""

from lmc.runtime.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_periodic_lines_with_rate_and_eta_in_logs(capsys):
    clock = Clock()
    progress = Progress("child_0", start=200, total=1400, log_every_s=30.0, clock=clock)
    lines = []
    for step in range(201, 1401):
        clock.now += 0.125  # 8 steps per second
        progress.update(step)
        lines += [line for line in capsys.readouterr().err.splitlines() if line]
    # Every 30 s (240 steps) and at the last step; by hand: 8 it/s, (1400 - step) / 8 s left.
    assert lines == [
        "child_0: step 440/1400 (31%), 8.0 it/s, eta 2m00s",
        "child_0: step 680/1400 (49%), 8.0 it/s, eta 1m30s",
        "child_0: step 920/1400 (66%), 8.0 it/s, eta 1m00s",
        "child_0: step 1160/1400 (83%), 8.0 it/s, eta 30s",
        "child_0: step 1400/1400 (100%), 8.0 it/s, eta 0s",
    ]


def test_disabled_progress_prints_nothing(capsys):
    clock = Clock()
    progress = Progress("x", start=0, total=10, enabled=False, log_every_s=0.0, clock=clock)
    for step in range(1, 11):
        clock.now += 1.0
        progress.update(step)
    assert capsys.readouterr().err == ""
