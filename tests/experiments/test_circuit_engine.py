"""The circuit merge through the experiment engine: its results.json entry states the
midpoint's size and that it is not a same-shape merge, and the table lists it apart."""

import pytest
from helpers import tiny_lm_config

from lmc.errors import UserError
from lmc.experiments import run_experiment
from lmc.experiments.common import methods as methods_lib


def test_lm_pair_reports_circuit_apart_with_its_parameter_count(tmp_path):
    from lmc.cli.report import report_dirs

    c = tiny_lm_config(tmp_path, "pair")
    c.data.name = "text:code"
    c.eval.methods = ("naive", "circuit", "weight_matching")  # circuit listed mid-way
    results = run_experiment(c, tmp_path / "pair")
    entry = results["methods"]["circuit"]
    assert "error" not in entry, entry.get("traceback")
    assert entry["same_shape"] is False and entry["circuit_base"] == "weight_matching_orthogonal"
    assert entry["midpoint_params"] > entry["endpoint_params"]
    ends = {k: v for k, v in results["endpoints"]["a"].items() if k in entry["barrier"]}
    for metric, value in ends.items():  # alpha 0 is A itself, up to rounding
        assert entry["curves"][metric][0] == pytest.approx(value, rel=1e-4, abs=1e-6)
    table = report_dirs([str(tmp_path / "pair")])
    names = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| ")]
    names = [n for n in names if n.split(" ")[0] in c.eval.methods]
    ratio = entry["midpoint_params"] / entry["endpoint_params"]
    # after the same-shape rows, marked with its size
    assert names == ["naive", "weight_matching",
                     f"circuit [not same-shape: midpoint {ratio:.2f}x params]"]  # fmt: skip


@pytest.mark.parametrize(
    "change, match",
    [
        ({"methods": ("circuit+repair",)}, r"\+reset/\+repair"),
        ({"positions": "rotary"}, "positions='learned'"),
        ({"circuit_base": "circuit"}, "circuit_base"),
    ],
)
def test_circuit_refuses_what_it_cannot_merge(tmp_path, change, match):
    c = tiny_lm_config(tmp_path, "pair")
    c.eval.methods = change.get("methods", ("circuit",))
    c.model.positions = change.get("positions", "learned")
    c.align.circuit_base = change.get("circuit_base", "weight_matching_orthogonal")
    with pytest.raises(UserError, match=match):
        methods_lib.validate_methods(c, has_batchnorm=False)
