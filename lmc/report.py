"""`lmc report DIR...`: each experiment's own table, from results.json files.

A DIR may be a run's workdir (holding results.json) or a sweep directory (whose
sub-directories hold them); several DIRs are compared in one table per experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmc.errors import UserError


def find_results(directory: str | Path) -> list[tuple[str, dict]]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"lmc report: {directory} is not a directory")
    direct = directory / "results.json"
    paths = [direct] if direct.exists() else sorted(directory.glob("*/results.json"))
    found = []
    for path in paths:
        try:
            found.append((str(path.parent), json.loads(path.read_text())))
        except ValueError as e:
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
