"""The paper-scale permuted-MNIST experiments (Figures 2A, 2B, 2C), recorded in ``results/``.

Each figure has a fixed configuration (:data:`CONFIGS`, the paper's Table S1 read as
explained below), a search for the penalty strength ``lam`` on a validation split held out
of the training images, and one *run* per (seed, method) or (seed, square). A run is written
to its results file as soon as it finishes, together with its provenance, so that a long
job can be stopped and resumed (:func:`record`), and each run records an early *checkpoint*
(a fingerprint of the parameters after :data:`REPLAY_STEPS` SGD steps) so that a test can
replay the start of the run from the recorded configuration and check that this code
produced the file (:func:`replay`).

Reading of Table S1 (column A, the same for B and C unless said):

* "learning rate 1e-3" with no minibatch size: we read it as a step of 1e-3 per example on
  the *summed* loss of a minibatch, which is ``lr = 0.1`` on the *mean* loss of a minibatch
  of 100 (the common Torch7 practice of the time; ``lr = 1e-3`` on a mean loss moves a
  network by 1/100 as much and needs ~100 times the epochs to train).
* The data term is plain SGD. The quadratic penalty (EWC or L2) is applied in closed form
  after each data step (:meth:`ewc_lib.EWCPenalty.proximal_step`): the same fixed points as
  SGD on the sum, but stable for any ``lam``, so that the search is not capped by the
  step-size bound ``lr * lam * max F < 2``.
* The Fisher is the exact diagonal (:func:`ewc_lib.fisher_diagonal`, labels averaged over
  the model's predictive distribution) on the first 10,000 training images of the task.
* ``lam`` is searched on a validation split: the last 10,000 training images of every task
  (:func:`ewc_lib.tasks.hold_out_validation`), training on the first 50,000; the test set is
  never used to choose anything.
* Test accuracies are on the full 10,000-image test set of every task.
* Figure 2C uses ``lr = 0.01``: at 0.1 the six-layer network, after 100 epochs on plain
  MNIST, diverged (non-finite loss) within the first steps of the second task.
* A search point whose training diverges is recorded as diverged (no accuracy), not dropped.
"""

from __future__ import annotations

from .config import CONFIGS, FISHER_N, N_VAL, REPLAY_STEPS
from .records import (
    RESULTS_DIR,
    chosen_lambdas,
    code_state,
    existing,
    l2_matching_ewc,
    load_results,
    merge_runs,
    planned_runs,
    record,
    recorded,
    run_key,
    select_lambda,
    summarize,
    write_chosen_lambdas,
)
from .runs import fingerprint, overlap_at_init, replay, run_fig2a, run_fig2b, run_fig2c, search_lambda

__all__ = [
    "CONFIGS",
    "FISHER_N",
    "N_VAL",
    "REPLAY_STEPS",
    "RESULTS_DIR",
    "chosen_lambdas",
    "code_state",
    "existing",
    "fingerprint",
    "l2_matching_ewc",
    "load_results",
    "merge_runs",
    "overlap_at_init",
    "planned_runs",
    "record",
    "run_key",
    "recorded",
    "replay",
    "run_fig2a",
    "run_fig2b",
    "run_fig2c",
    "search_lambda",
    "select_lambda",
    "summarize",
    "write_chosen_lambdas",
]
