"""`lmc report DIR...`: each experiment's own table, from results.json files.

A DIR may be a run's workdir (holding results.json) or a sweep directory (whose
sub-directories hold them); several DIRs are compared in one table per experiment.
"""

from __future__ import annotations

from lmc.errors import UserError
from lmc.runtime import io


def find_results(directory: io.PathLike) -> list[tuple[str, dict]]:
    """(run dir, results) for the run in `directory` or in each of its sub-directories;
    local paths and URLs (gs://...) alike."""
    directory = io.path(directory)
    with io.os_errors(directory, "reading it"):
        if not io.is_dir(directory):
            raise UserError(f"lmc report: {directory} is not a directory")
        direct = directory / "results.json"
        if io.exists(direct):
            paths = [direct]
        else:
            subdirs = [directory / name for name in io.listdir(directory)]
            paths = [d / "results.json" for d in subdirs if io.exists(d / "results.json")]
        found = []
        for path in paths:
            try:
                found.append((str(path.parent), io.read_json(path)))
            except (ValueError, UnicodeDecodeError) as e:
                raise UserError(f"lmc report: {path} is not valid JSON ({e})") from None
    return found


def report_dirs(dirs: list[str]) -> str:
    from lmc import experiments

    runs = []
    for d in dirs:
        found = find_results(d)
        if not found:
            raise UserError(
                f"lmc report: no results.json in {d} or its sub-directories (is the run finished?)"
            )
        runs.extend(found)
    return experiments.table(runs)
