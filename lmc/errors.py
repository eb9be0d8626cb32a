"""User-facing errors.

A `UserError` is a mistake the user can fix (bad config value, missing data, a
workdir made by another config). The CLI prints its message and exits with code 2,
without a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by user input; the message names the culprit and the fix."""


def choose(kind: str, value: str, valid) -> None:
    """Raise a UserError unless `value` is one of `valid`, listing the valid ones."""
    valid = sorted(valid)
    if value not in valid:
        raise UserError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def positive(key: str, value) -> None:
    """Raise a UserError unless config value `key` (e.g. "model.width") is positive."""
    if value is None or value <= 0:
        raise UserError(f"config.{key} must be positive, got {value!r}")


# Exit codes of the `lmc` command (docs/reference/errors.md): one definition for run and sweep.
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_LOCK_LOST = 4  # another run took over the workdir lock; this one stopped writing
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun the same command to continue
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after checkpointing
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (128 + SIGPIPE, as the shell reports)
