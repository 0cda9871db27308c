"""The recorded paper-scale results (results/*.json) come from this code.

For each figure: the file has the fields and seeds asked for, its config is the code's
config, the lambda of every run is the one its recorded search selected, and the first
``REPLAY_STEPS`` SGD steps of one recorded run, re-run from the recorded config and seed,
reproduce the recorded checkpoint. Figure 2C's overlap at initialisation is recomputed.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from ewc_lib import experiments as ex
from ewc_lib.testing import OVERLAP_INIT_RTOL, REPLAY_RTOL

FIGURES = ("fig2a", "fig2b", "fig2c")
MIN_SEEDS = {"fig2a": 3, "fig2b": 3, "fig2c": 3}
KEYS = {
    "fig2a": ("method", {"sgd", "l2", "ewc"}),
    "fig2b": ("method", {"ewc", "sgd_dropout", "single_task"}),
    "fig2c": ("square", {8, 26}),
}


@pytest.fixture(scope="module", params=FIGURES)
def recorded(request):
    """(figure, data) of a results file (every figure is recorded: a missing file fails)."""
    figure = request.param
    if not (ex.RESULTS_DIR / f"{figure}.json").exists():
        pytest.fail(f"results/{figure}.json is missing (make paper-scale records it)")
    return figure, ex.load_results(figure)


def test_all_runs_recorded(recorded):
    """Every method (or square) of every figure has the seeds the book reports."""
    figure, data = recorded
    key, values = KEYS[figure]
    seeds = {v: {r["seed"] for r in data["runs"] if r[key] == v} for v in values}
    short = {v: sorted(s) for v, s in seeds.items() if len(s) < MIN_SEEDS[figure]}
    assert not short, f"{figure}: fewer than {MIN_SEEDS[figure]} seeds recorded for {short}"


def test_fields(recorded):
    figure, data = recorded
    prov = data["provenance"]
    assert prov["cpu_seconds"] > 0 and prov["threads"] >= 1 and prov["torch"]
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ex.RESULTS_DIR, capture_output=True, text=True
    ).stdout.strip()
    if shallow == "false":
        for commit in {prov["commit"], *(r.get("commit", prov["commit"]) for r in data["runs"])}:
            ok = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ex.RESULTS_DIR).returncode == 0
            assert ok, f"{figure}: provenance commit {commit} is not in this repository"
    cfg_no_lam = {k: v for k, v in data["config"].items() if k != "lam"}
    assert cfg_no_lam == ex.CONFIGS[figure], "the recorded config is not the code's"
    # config.lam: the lambda of each penalty, derived from the search (2B: from 2A's)
    chosen = ex.chosen_lambdas(figure, data)
    if chosen is not None:
        assert data["config"].get("lam") == chosen, (data["config"].get("lam"), chosen)
    key, values = KEYS[figure]
    cfg = data["config"]
    assert {r[key] for r in data["runs"]} <= values
    pairs = [(r["seed"], r[key]) for r in data["runs"]]
    assert len(pairs) == len(set(pairs)), f"{figure}: a run is recorded twice"
    for r in data["runs"]:
        T = 1 if r.get("method") == "single_task" else cfg["tasks"]
        R = np.array(r["accuracy_matrix"])
        assert R.shape == (T, T) and np.all((R >= 0) & (R <= 1))
        if figure == "fig2b":
            assert len(r["average_accuracy"]) == T
            assert np.allclose(r["average_accuracy"], [R[t, : t + 1].mean() for t in range(T)], atol=1e-4)
        if figure == "fig2c":
            n_layers = len(cfg["hidden"]) + 1
            assert len(r["overlap"]) == len(r["overlap_at_init"]) == n_layers


def test_lambda_is_the_searched_one(recorded):
    figure, data = recorded
    source = data if figure != "fig2b" else ex.load_results("fig2a")
    points = source["search"]["points"]
    grid = source["config"]["lam_grid"]
    for r in data["runs"]:
        method = r.get("method", "ewc")
        if method in ("sgd", "sgd_dropout", "single_task"):
            assert r["lam"] == 0.0
        else:
            expected = ex.select_lambda(points, method, grid[method])
            assert r["lam"] == expected, (figure, method, r["lam"], expected)
    for r in data.get("extra_runs") or []:
        assert r["role"] == "l2_protects_A" and r["method"] == "l2"
        assert r["lam"] == ex.l2_matching_ewc(points), (r["lam"], ex.l2_matching_ewc(points))


def _replay_target(figure, data):
    """The first recorded run of the preferred kind (EWC; 2B: dropout; 2C: 26x26), else any."""
    key, value = {"fig2a": ("method", "ewc"), "fig2b": ("method", "sgd_dropout"), "fig2c": ("square", 26)}[figure]
    runs = sorted(data["runs"], key=lambda r: (r[key] != value, r["seed"]))
    if not runs:
        pytest.skip(f"{figure}: no run recorded yet (only the search)")
    return runs[0]


def test_replay_reproduces_the_recorded_checkpoint(recorded):
    figure, data = recorded
    run = _replay_target(figure, data)
    threads = torch.get_num_threads()
    torch.set_num_threads(data["provenance"]["threads"])
    try:
        got = ex.replay(figure, run, data["config"])
    finally:
        torch.set_num_threads(threads)
    want = run["checkpoint"]
    assert got["step"] == want["step"] == ex.REPLAY_STEPS
    for name, (s_want, n_want) in want["params"].items():
        s_got, n_got = got["params"][name]
        scale = REPLAY_RTOL * n_want
        assert abs(n_got - n_want) <= scale and abs(s_got - s_want) <= scale * 30, (
            f"{figure} seed {run['seed']}: parameter {name} after {want['step']} steps has "
            f"(sum, norm) = ({s_got:.6g}, {n_got:.6g}), recorded ({s_want:.6g}, {n_want:.6g})"
        )


def test_replay_detects_a_different_run(recorded):
    """The check can fail: another seed's checkpoint does not match."""
    figure, data = recorded
    run = dict(_replay_target(figure, data))
    run["seed"] += 1000
    got = ex.replay(figure, run, data["config"], steps=20)
    other = ex.replay(figure, _replay_target(figure, data), data["config"], steps=20)
    diffs = [abs(got["params"][n][1] - other["params"][n][1]) / other["params"][n][1] for n in other["params"]]
    assert max(diffs) > 100 * REPLAY_RTOL


def test_fig2c_overlap_at_init_is_recomputed():
    data = ex.recorded("fig2c")
    if not data["runs"]:
        pytest.skip("fig2c: no run recorded yet")
    for square in sorted({r["square"] for r in data["runs"]}):
        run = min((r for r in data["runs"] if r["square"] == square), key=lambda r: r["seed"])
        got = ex.overlap_at_init(run, data["config"])
        np.testing.assert_allclose(
            got, run["overlap_at_init"], rtol=OVERLAP_INIT_RTOL, err_msg=f"overlap at init, square {square}"
        )
