"""Tests for ewc_lib.continual.train_continual on tiny synthetic tasks (seconds on a CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ewc_lib
from ewc_lib.continual import ContinualHistory, evaluate_accuracy, train_continual
from ewc_lib.reference import fisher_diagonal_loop


def make_task(name, dims, *, n=200, n_test=100, d=10, seed=0):
    """Binary task whose inputs are nonzero only in ``dims``; label = sign of the first one."""
    g = torch.Generator().manual_seed(seed)

    def draw(m):
        x = torch.zeros(m, d)
        x[:, dims] = torch.randn(m, len(dims), generator=g)
        return x, (x[:, dims[0]] > 0).long()

    x_tr, y_tr = draw(n)
    x_te, y_te = draw(n_test)
    return SimpleNamespace(name=name, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def two_tasks():
    return [make_task("A", [0, 1, 2, 3, 4], seed=1), make_task("B", [5, 6, 7, 8, 9], seed=2)]


def linear_net(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(10, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
    return net


def params_vec(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def mean_loss(net, task):
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(task.x_test), task.y_test))


# ------------------------------------------------------------------------ history
def test_records_shape_and_history_methods():
    tasks = two_tasks()
    net = ewc_lib.mlp([10, 8, 2], seed=0)
    hist = train_continual(
        net, tasks, method="ewc", lam=5.0, lr=0.1, epochs_per_task=2, batch_size=50, eval_every=3, progress=False
    )
    assert isinstance(hist, ContinualHistory) and hist.method == "ewc"
    steps_per_task = 2 * 4
    assert hist.config["steps_per_task"] == [steps_per_task, steps_per_task]
    assert hist.task_boundaries == [0, steps_per_task]
    total = 2 * steps_per_task
    eval_steps = sorted({0, *range(3, total + 1, 3), steps_per_task, total})
    assert len(hist.records) == 2 * len(eval_steps)
    for r in hist.records:
        assert set(r) >= {"step", "epoch", "trained_task", "eval_task", "accuracy", "end_of_task"}
        assert 0.0 <= r["accuracy"] <= 1.0
    steps, acc = hist.curve(1)
    assert steps.tolist() == eval_steps and acc.shape == steps.shape
    assert np.all(np.diff(steps) > 0)
    R = hist.accuracy_matrix()
    assert R.shape == (2, 2) and not np.isnan(R).any()
    np.testing.assert_array_equal(hist.final_accuracies(), R[1])
    np.testing.assert_allclose(hist.average_after_each_task(), [R[0, 0], R[1].mean()])
    ends = [r for r in hist.records if r["end_of_task"]]
    assert [(r["step"], r["trained_task"]) for r in ends] == [(8, 0), (8, 0), (16, 1), (16, 1)]
    assert hist.penalty.num_tasks == 1  # consolidated after A, not after the last task
    assert hist.cpu_seconds >= 0 and not net.training


def test_determinism_same_seed_and_rng_untouched():
    tasks = two_tasks()

    def run(seed):
        net = ewc_lib.mlp([10, 16, 2], dropout_hidden=0.5, seed=0)
        hist = train_continual(
            net,
            tasks,
            method="ewc",
            lam=3.0,
            lr=0.2,
            epochs_per_task=2,
            batch_size=32,
            eval_every=5,
            seed=seed,
            progress=False,
        )
        return hist, params_vec(net)

    state = torch.random.get_rng_state()
    h1, p1 = run(0)
    h2, p2 = run(0)
    h3, p3 = run(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert h1.records == h2.records and torch.equal(p1, p2)
    assert not torch.equal(p1, p3)


def test_sgd_and_no_eval_every():
    tasks = two_tasks()
    net = linear_net()
    hist = train_continual(net, tasks, method="sgd", lr=0.5, epochs_per_task=3, batch_size=40, progress=False)
    assert hist.penalty is None
    assert len(hist.records) == 4 and all(r["end_of_task"] for r in hist.records)
    # both tasks are learnable and do not interfere much (disjoint inputs)
    assert hist.accuracy_matrix()[0, 0] > 0.9 and hist.final_accuracies()[1] > 0.9


# ---------------------------------------------------------------------- behaviour
def test_huge_lam_keeps_parameters_at_anchor():
    """Large (but stable: lr * lam * max F < 2) lam: EWC keeps the Fisher-weighted distance to
    the end of task A tiny, L2 the Euclidean one; plain SGD moves far."""
    tasks = [make_task("A", list(range(10)), seed=1), make_task("B", list(range(10))[::-1], seed=2)]
    anchor_net = linear_net()
    train_continual(anchor_net, tasks[:1], method="sgd", lr=0.1, epochs_per_task=5, batch_size=20, progress=False)
    anchor = {n: p.detach() for n, p in anchor_net.named_parameters()}
    fisher = ewc_lib.curvature.fisher_diagonal(anchor_net, tasks[0].x_train)
    euclid, weighted = {}, {}
    for method, lam in (("sgd", 0.0), ("l2", 15.0), ("ewc", 50.0)):
        net = linear_net()
        hist = train_continual(
            net, tasks, method=method, lam=lam, lr=0.1, epochs_per_task=5, batch_size=20, progress=False
        )
        if hist.penalty is not None:  # the stored anchor is the end of task A, bit for bit
            for n, a in hist.penalty.anchors[0].items():
                torch.testing.assert_close(a, anchor[n], rtol=0, atol=0)
        delta = {n: p.detach() - anchor[n] for n, p in net.named_parameters()}
        euclid[method] = max(float(d.abs().max()) for d in delta.values())
        weighted[method] = sum(float((fisher[n] * delta[n] ** 2).sum()) for n in delta)
    assert euclid["l2"] < 0.1 * euclid["sgd"], euclid
    assert weighted["ewc"] < 0.05 * weighted["sgd"], weighted


def test_ewc_learns_b_where_l2_cannot():
    """Disjoint inputs: A's Fisher is zero on B's weights, so EWC lets B learn; L2 does not."""
    tasks = two_tasks()
    out = {}
    for method in ("l2", "ewc"):
        net = linear_net()
        hist = train_continual(
            net, tasks, method=method, lam=15.0, lr=0.1, epochs_per_task=10, batch_size=20, progress=False
        )
        out[method] = (hist, mean_loss(net, tasks[1]), mean_loss(net, tasks[0]))
    (_, b_l2, _), (h_ewc, b_ewc, _) = out["l2"], out["ewc"]
    assert b_ewc < 0.5 * b_l2, (b_ewc, b_l2)
    assert b_l2 > 0.6  # near log 2: L2 pins B's weights near their zero anchor
    R = h_ewc.accuracy_matrix()
    assert R[1, 0] >= R[0, 0] - 0.02  # EWC keeps A
    assert R[1, 1] > 0.9


def test_penalty_mode_online_runs_and_matches_separate_for_two_tasks():
    tasks = two_tasks()
    hists = []
    for mode, gamma in (("separate", 1.0), ("online", 0.5)):
        net = ewc_lib.mlp([10, 8, 2], seed=0)
        hists.append(
            train_continual(
                net, tasks, method="ewc", lam=5.0, lr=0.1, penalty_mode=mode, gamma=gamma, batch_size=50, progress=False
            )
        )
    # only one consolidation happens with two tasks, so both modes train identically
    assert hists[0].records == hists[1].records
    assert hists[1].penalty.mode == "online"


@pytest.mark.parametrize("estimator", ["exact", "mc", "empirical", "batched_empirical"])
def test_every_fisher_estimator_runs(estimator):
    tasks = two_tasks()
    net = ewc_lib.mlp([10, 8, 2], seed=0)
    hist = train_continual(
        net,
        tasks,
        method="ewc",
        lam=5.0,
        lr=0.1,
        batch_size=50,
        fisher_estimator=estimator,
        fisher_num_examples=60,
        fisher_batch_size=10,
        progress=False,
    )
    fisher = hist.penalty.fishers[0]
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in fisher.values())


def test_fisher_used_is_the_mean_fisher_at_the_end_of_a():
    """The stored Fisher equals fisher_diagonal at the end of task A on the same examples."""
    tasks = two_tasks()
    net = ewc_lib.mlp([10, 8, 2], seed=0, dtype=torch.float64)
    hist = train_continual(
        net, [tasks[0], tasks[0]], method="ewc", lam=0.0, lr=0.1, batch_size=50, fisher_num_examples=40, progress=False
    )
    anchor = hist.penalty.anchors[0]
    ref_net = ewc_lib.mlp([10, 8, 2], seed=0, dtype=torch.float64)
    with torch.no_grad():
        for n, p in ref_net.named_parameters():
            p.copy_(anchor[n])
    expected = fisher_diagonal_loop(ref_net, tasks[0].x_train[:40].double())
    for n, f in hist.penalty.fishers[0].items():
        # float64, a few hundred products: round-off only
        torch.testing.assert_close(f, expected[n], rtol=1e-9, atol=1e-12)


def test_evaluate_accuracy():
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert evaluate_accuracy(net, x, y, chunk_size=3) == 0.75


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="adam"), ValueError, "method"),
        (dict(method="sgd", lam=1.0), ValueError, "lam"),
        (dict(method="ewc", lam=-1.0), ValueError, "lam"),
        (dict(method="ewc", lam=float("nan")), ValueError, "lam"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=float("inf")), ValueError, "lr"),
        (dict(epochs_per_task=0), ValueError, "epochs_per_task"),
        (dict(batch_size=1.5), TypeError, "batch_size"),
        (dict(eval_every=0), ValueError, "eval_every"),
        (dict(eval_num_examples=-3), ValueError, "eval_num_examples"),
        (dict(fisher_num_examples=0), ValueError, "fisher_num_examples"),
        (dict(method="ewc", fisher_estimator="kfac"), ValueError, "fisher_estimator"),
        (dict(method="ewc", penalty_mode="sum"), ValueError, "mode"),
        (dict(method="ewc", gamma=0.9), ValueError, "gamma"),
        (dict(method="ewc", penalty_mode="online", gamma=1.5), ValueError, "gamma"),
        (dict(seed=-1), ValueError, "seed"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        train_continual(linear_net(), two_tasks(), progress=False, **kwargs)


def test_bad_tasks_and_model():
    with pytest.raises(ValueError, match="tasks"):
        train_continual(linear_net(), [], progress=False)
    t = two_tasks()[0]
    bad = SimpleNamespace(**{**vars(t), "y_train": t.y_train.float()})
    with pytest.raises(TypeError, match="y_train"):
        train_continual(linear_net(), [bad], progress=False)
    bad = SimpleNamespace(**{**vars(t), "y_test": t.y_test[:5]})
    with pytest.raises(ValueError, match="x_test"):
        train_continual(linear_net(), [bad], progress=False)
    bad = SimpleNamespace(**{k: v for k, v in vars(t).items() if k != "x_train"})
    with pytest.raises(TypeError, match="x_train"):
        train_continual(linear_net(), [bad], progress=False)
    with pytest.raises(TypeError, match="model"):
        train_continual(lambda x: x, [t], progress=False)


def test_divergence_is_reported():
    with pytest.raises(FloatingPointError, match="lower lr"):
        train_continual(linear_net(), two_tasks(), method="l2", lam=1e6, lr=1.0, epochs_per_task=3, progress=False)


def test_penalty_step_curvature_is_recorded():
    tasks = two_tasks() + [make_task("C", [0, 9], seed=3)]
    net = linear_net()
    hist = train_continual(net, tasks, method="l2", lam=3.0, lr=0.1, batch_size=50, progress=False)
    # L2, separate: after k consolidations the Hessian is 3 * k * I
    np.testing.assert_allclose(hist.penalty_step_curvature, [0.3, 0.6], rtol=1e-12)
    hist = train_continual(linear_net(), tasks, method="ewc", lam=3.0, lr=0.1, batch_size=50, progress=False)
    assert len(hist.penalty_step_curvature) == 2
    assert hist.penalty_step_curvature[-1] == pytest.approx(0.1 * hist.penalty.max_curvature())
    assert train_continual(linear_net(), tasks, progress=False).penalty_step_curvature == []


# ------------------------------------------------------------------ proximal penalty step
def _quadratic_setup(lam, fisher_value=2.0):
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.3)
    pen = ewc_lib.EWCPenalty(lam)
    pen.consolidate(net, {"weight": torch.full((1, 1), fisher_value)})
    return net, pen


def test_proximal_step_is_the_exact_minimiser_of_the_prox_problem():
    """u = argmin (1/2)(u - w)^2 + lr (lam/2) F (u - a)^2, checked against the closed form."""
    lam, lr, f = 7.0, 0.05, 2.0
    net, pen = _quadratic_setup(lam, f)
    anchor = 0.3
    with torch.no_grad():
        net.weight.fill_(1.7)
    pen.proximal_step(net, lr)
    expected = (1.7 + lr * lam * f * anchor) / (1 + lr * lam * f)
    assert abs(net.weight.item() - expected) < 1e-6  # float32 parameter: a few ulps


def test_proximal_step_matches_a_gradient_step_to_second_order():
    """For small lr the implicit and explicit steps differ by O(lr^2) (ratio of errors ~ 4)."""
    errors = []
    for lr in (1e-2, 5e-3):
        net, pen = _quadratic_setup(10.0)
        net.double()
        pen = ewc_lib.EWCPenalty(10.0)
        pen.consolidate(net, {"weight": torch.full((1, 1), 2.0, dtype=torch.float64)})
        with torch.no_grad():
            net.weight.add_(1.0)
        w0 = net.weight.item()
        explicit = w0 - lr * 10.0 * 2.0 * (w0 - 0.3)
        pen.proximal_step(net, lr)
        errors.append(abs(net.weight.item() - explicit))
    assert 3.5 < errors[0] / errors[1] < 4.5, errors


def test_proximal_training_fixed_point_is_a_stationary_point_of_the_objective():
    """Full-batch GD + proximal penalty converges to the minimiser of L_B + penalty.

    L2 makes the objective strongly convex (the separable tasks alone have no minimiser).
    """
    tasks = two_tasks()
    net = linear_net().double()
    for t in tasks:
        for attr in ("x_train", "x_test"):
            setattr(t, attr, getattr(t, attr).double())
    hist = train_continual(
        net,
        tasks,
        method="l2",
        lam=1.0,
        lr=0.5,
        epochs_per_task=400,
        batch_size=200,
        penalty_step="proximal",
        progress=False,
    )
    assert hist.penalty_step_curvature[0] > 0
    net.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(tasks[1].x_train), tasks[1].y_train)
    (loss + hist.penalty(net)).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert grad.abs().max() < 1e-10, grad  # converged GD in float64: the gradient vanishes


def test_proximal_step_is_stable_where_the_gradient_step_diverges():
    tasks = two_tasks()
    kwargs = dict(method="ewc", lam=1e6, lr=1.0, epochs_per_task=3, batch_size=50, progress=False)
    with pytest.raises(FloatingPointError):
        train_continual(linear_net(), tasks, penalty_step="gradient", **kwargs)
    hist = train_continual(linear_net(), tasks, penalty_step="proximal", **kwargs)
    assert hist.penalty_step_curvature[0] > 2  # far beyond the explicit bound
    assert np.isfinite(hist.accuracy_matrix()).all()


def test_penalty_step_is_validated():
    with pytest.raises(ValueError, match="penalty_step"):
        train_continual(linear_net(), two_tasks(), penalty_step="implicit", progress=False)
    net, pen = _quadratic_setup(1.0)
    with pytest.raises(ValueError, match="lr"):
        pen.proximal_step(net, -0.1)


# ------------------------------------------------------------------ early stopping, callback
def _with_validation(task, n_val=50):
    return SimpleNamespace(
        name=task.name,
        x_train=task.x_train[:-n_val],
        y_train=task.y_train[:-n_val],
        x_val=task.x_train[-n_val:],
        y_val=task.y_train[-n_val:],
        x_test=task.x_test,
        y_test=task.y_test,
    )


def test_early_stopping_restores_the_best_validation_weights():
    tasks = [_with_validation(t) for t in two_tasks()]
    seen = []

    def callback(step, model):
        seen.append(step)

    hist = train_continual(
        linear_net(),
        tasks,
        method="sgd",
        lr=0.5,
        epochs_per_task=60,
        batch_size=40,
        early_stopping=2,
        callback=callback,
        progress=False,
    )
    assert all(1 <= e <= 60 for e in hist.epochs_run)
    assert min(hist.epochs_run) < 60  # the separable tasks saturate quickly
    assert seen == list(range(1, len(seen) + 1))
    assert seen[-1] == hist.task_boundaries[-1] + hist.epochs_run[-1] * 4  # 4 steps an epoch


def test_early_stopping_keeps_the_best_epoch():
    """The returned weights are those of the epoch with the best validation accuracy."""
    tasks = [_with_validation(make_task("A", [0, 1, 2, 3, 4], seed=1))]
    best = {}

    def callback(step, model):
        if step % 4 == 0:  # end of an epoch (150 images, batches of 40)
            acc = evaluate_accuracy(model, tasks[0].x_val, tasks[0].y_val)
            if acc > best.get("acc", -1):
                best.update(acc=acc, w=params_vec(model).clone())

    net = linear_net()
    train_continual(
        net,
        tasks,
        method="sgd",
        lr=2.0,
        epochs_per_task=15,
        batch_size=40,
        early_stopping=3,
        callback=callback,
        progress=False,
        seed=3,
    )
    assert torch.equal(params_vec(net), best["w"])


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(TypeError, match="x_val"):
        train_continual(linear_net(), two_tasks(), early_stopping=3, progress=False)


def test_callback_must_be_callable():
    with pytest.raises(TypeError, match="callback"):
        train_continual(linear_net(), two_tasks(), callback=3, progress=False)


def test_hold_out_validation_splits_the_last_training_images():
    from ewc_lib.tasks import hold_out_validation, permuted_mnist_tasks

    task = permuted_mnist_tasks(1, n_train=300, n_test=20)[0]
    t = hold_out_validation(task, 100)
    assert torch.equal(t.x_val, task.x_train[200:]) and torch.equal(t.x_train, task.x_train[:200])
    assert torch.equal(t.x_test, task.x_test)
    s = hold_out_validation(task, 100, as_test=True)
    assert torch.equal(s.x_test, task.x_train[200:]) and torch.equal(s.y_test, task.y_train[200:])
    for bad in (0, 300, 1.5, True):
        with pytest.raises(ValueError, match="n_val"):
            hold_out_validation(task, bad)
    with pytest.raises(TypeError, match="task"):
        hold_out_validation("A", 10)


def test_fisher_fn_replaces_the_estimator():
    """A brute-force reference passed as fisher_fn is what the penalty stores."""
    tasks = two_tasks()
    calls = []

    def reference(model, x, y):
        calls.append((model.training, x.shape[0]))
        return fisher_diagonal_loop(model, x[:30])

    net = ewc_lib.mlp([10, 8, 2], seed=0, dtype=torch.float64)
    hist = train_continual(
        net, [tasks[0], tasks[0]], method="ewc", lam=0.0, lr=0.1, batch_size=50, fisher_fn=reference, progress=False
    )
    assert calls == [(False, tasks[0].x_train.shape[0])]  # eval mode, the whole training set
    assert hist.config["fisher_fn"] == "reference"
    with pytest.raises(TypeError, match="fisher_fn"):
        train_continual(net, tasks, method="ewc", lam=1.0, fisher_fn="exact", progress=False)
