"""The loop of :func:`~ewc_lib.continual.train_continual` (private): train, evaluate, consolidate.

``train_continual`` checks its arguments and builds a :class:`_Run`; ``_Run.train`` trains the
tasks in order (``train_task``, one ``sgd_step`` per minibatch), measures the test accuracy of
every task (``evaluate``) and, after each task but the last, stores the penalty of the task
just learnt (``consolidate``, with the Fisher of :func:`_fisher` or the caller's ``fisher_fn``).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .curvature import fisher_diagonal
from .history import ContinualHistory, evaluate_accuracy
from .progress import progress_bar


class _Run:
    """The state of one :func:`train_continual` call (arguments already checked)."""

    def __init__(self, *, model, tasks, penalty, params, config, fisher_fn, callback, progress):
        self.model, self.tasks, self.penalty, self.config = model, tasks, penalty, config
        self.fisher_fn, self.callback, self.progress = fisher_fn, callback, progress
        self.dtype = params[0].dtype
        self.optimizer = torch.optim.SGD(params, lr=config["lr"])
        self.batch_gen = torch.Generator().manual_seed(config["seed"])
        n_eval = config["eval_num_examples"]
        self.eval_sets = [(t.x_test[:n_eval].to(self.dtype), t.y_test[:n_eval]) for t in tasks]
        self.records: list[dict] = []
        self.boundaries: list[int] = []
        self.epochs_run: list[int] = []
        self.step_curvature: list[float] = []
        self.step = 0

    def evaluate(self, epoch, trained_task, end_of_task):
        """Test accuracy of every task now (one record per task)."""
        for j, (xe, ye) in enumerate(self.eval_sets):
            self.records.append(
                dict(
                    step=self.step,
                    epoch=epoch,
                    trained_task=trained_task,
                    eval_task=j,
                    accuracy=evaluate_accuracy(self.model, xe, ye),
                    end_of_task=end_of_task,
                )
            )

    def sgd_step(self, x, y, t):
        """One minibatch step on the task loss (+ the penalty, as a gradient or proximally)."""
        model, penalty, cfg = self.model, self.penalty, self.config
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        penalised = penalty is not None and penalty.num_tasks > 0
        if penalised and cfg["penalty_step"] == "gradient":
            loss = loss + penalty(model)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {float(loss.detach())} at step {self.step} (task {t}); lower lr or lam"
            )
        loss.backward()
        self.optimizer.step()
        if penalised and cfg["penalty_step"] == "proximal":
            penalty.proximal_step(model, cfg["lr"])
        self.step += 1
        if self.callback is not None:
            self.callback(self.step, model)

    def train_task(self, t, task, bar):
        """Train task ``t`` for its epochs (or until early stopping); evaluate at the end."""
        cfg = self.config
        epochs, batch, eval_every = cfg["epochs_per_task"], cfg["batch_size"], cfg["eval_every"]
        self.boundaries.append(self.step)
        x, y = task.x_train.to(self.dtype), task.y_train
        best = None  # (validation accuracy, epoch, state) with early stopping
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0], generator=self.batch_gen)
            for start in range(0, x.shape[0], batch):
                idx = order[start : start + batch]
                self.sgd_step(x[idx], y[idx], t)
                bar.update(1)
                last_step_of_task = epoch == epochs - 1 and start + batch >= x.shape[0]
                if eval_every is not None and self.step % eval_every == 0 and not last_step_of_task:
                    self.evaluate(epoch, t, False)
            if cfg["early_stopping"] is not None:
                acc = evaluate_accuracy(self.model, task.x_val.to(self.dtype), task.y_val)
                if best is None or acc > best[0]:
                    best = (acc, epoch, copy.deepcopy(self.model.state_dict()))
                elif epoch - best[1] >= cfg["early_stopping"]:
                    break
        if best is not None:
            self.model.load_state_dict(best[2])
            bar.update(cfg["steps_per_task"][t] - (self.step - self.boundaries[t]))
        self.epochs_run.append(epoch + 1)
        self.evaluate(epoch, t, True)

    def consolidate(self, task):
        """Anchor the penalty at the current parameters (EWC: with the task's Fisher)."""
        if self.config["method"] == "ewc":
            self.model.eval()
            fisher = self.fisher_fn(self.model, task.x_train.to(self.dtype), task.y_train)
            self.penalty.consolidate(self.model, fisher)
        else:
            self.penalty.consolidate(self.model)
        self.step_curvature.append(self.config["lr"] * self.penalty.max_curvature())

    def train(self) -> ContinualHistory:
        cfg = self.config
        cpu0, wall0 = time.process_time(), time.perf_counter()
        bar = progress_bar(
            total=sum(cfg["steps_per_task"]),
            desc=f"{cfg['method']} ({len(self.tasks)} tasks)",
            disable=not self.progress,
            leave=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            if cfg["eval_every"] is not None:
                self.evaluate(0, 0, False)
            for t, task in enumerate(self.tasks):
                self.train_task(t, task, bar)
                if self.penalty is not None and t < len(self.tasks) - 1:
                    self.consolidate(task)
        bar.close()
        self.model.eval()
        return ContinualHistory(
            method=cfg["method"],
            config=cfg,
            task_names=cfg["task_names"],
            records=self.records,
            task_boundaries=self.boundaries,
            penalty=self.penalty,
            penalty_step_curvature=self.step_curvature,
            epochs_run=self.epochs_run,
            cpu_seconds=time.process_time() - cpu0,
            wall_seconds=time.perf_counter() - wall0,
        )


def _fisher(model, x, y, estimator, num_examples, batch_size, generator):
    """Mean diagonal Fisher of the categorical likelihood at the current parameters."""
    n = x.shape[0] if num_examples is None else min(num_examples, x.shape[0])
    kwargs = dict(likelihood="categorical", estimator=estimator)
    if estimator in ("empirical", "batched_empirical"):
        kwargs["targets"] = y[:n]
    if estimator == "batched_empirical":
        kwargs["batch_size"] = batch_size
    if estimator == "mc":
        kwargs["generator"] = generator
    model.eval()
    return fisher_diagonal(model, x[:n], **kwargs)
