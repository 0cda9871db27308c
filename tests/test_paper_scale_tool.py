"""``tools/paper_scale.py`` plans only what is not recorded, and ``--methods`` splits a seed.

Runs against an empty results directory (``EWC_RESULTS_DIR``), so nothing trains.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.fixture
def tool(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from ewc_lib.experiments import records

    monkeypatch.setattr(records, "RESULTS_DIR", tmp_path)
    return importlib.import_module("paper_scale")


def test_methods_filter_splits_one_seed(tool):
    both = tool._jobs("fig2b", [2])
    a = tool._jobs("fig2b", [2], ["ewc"])
    b = tool._jobs("fig2b", [2], ["sgd_dropout", "single_task"])
    assert [j[1] for j in both] == [(2, "ewc"), (2, "sgd_dropout"), (2, "single_task")]
    assert sorted(a + b, key=str) == sorted(both, key=str)


def test_search_points_always_planned_and_squares_are_keys(tool):
    jobs = tool._jobs("fig2c", [0], ["8"])
    assert [j[0] for j in jobs].count("search") == 3
    assert [j[1] for j in jobs if j[0] == "run"] == [(0, 8)]


def test_nothing_recorded_in_an_empty_directory(tool):
    assert not tool._recorded("fig2a", "run", (0, "sgd"))
    assert not tool._recorded("fig2a", "search", ("ewc", 100.0))


def test_unknown_method_is_an_error():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "paper_scale.py"), "fig2b", "--methods", "bogus"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "--methods: unknown ['bogus']" in out.stderr


def test_merge_runs_adds_missing_runs_keeping_their_commit(tool, tmp_path):
    import json

    from ewc_lib.experiments import CONFIGS, merge_runs, records

    def run(seed, square, commit):
        return {
            "seed": seed,
            "square": square,
            "commit": commit,
            "cpu_seconds": 10.0,
            "checkpoint": {"step": 300, "params": {}},
        }

    def file(runs, finished):
        return {
            "provenance": {
                "command": "c",
                "commit": "a" * 40,
                "finished": finished,
                "cpu_seconds": 10.0 * len(runs),
                "torch": "t",
                "threads": 1,
            },
            "config": dict(CONFIGS["fig2c"]),
            "search": None,
            "runs": runs,
        }

    (tmp_path / "fig2c.json").write_text(json.dumps(file([run(0, 8, "a" * 40)], "2026-01-01")))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(file([run(0, 8, "a" * 40), run(0, 26, "b" * 40)], "2026-02-01")))
    assert merge_runs("fig2c", other) == [(0, 26)]
    data = json.loads((tmp_path / "fig2c.json").read_text())
    assert {r["square"]: r["commit"][0] for r in data["runs"]} == {8: "a", 26: "b"}
    assert data["provenance"]["cpu_seconds"] == 20.0 and data["provenance"]["finished"] == "2026-02-01"
    assert merge_runs("fig2c", other) == []  # nothing twice
    bad = json.loads(other.read_text())
    bad["config"]["lr"] = 1.0
    other.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="config differs"):
        merge_runs("fig2c", other)
    assert records.RESULTS_DIR == tmp_path
