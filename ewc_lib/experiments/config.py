"""The settings of the recorded experiments: the paper's Table S1, read as the package says."""

from __future__ import annotations

REPLAY_STEPS = 300

N_VAL = 10_000  # validation images held out of each task's 60,000 training images
FISHER_N = 10_000  # training images per Fisher diagonal

CONFIGS = {
    "fig2a": dict(
        hidden=[400, 400],
        tasks=3,
        epochs_per_task=20,
        lr=0.1,
        batch_size=100,
        n_train=60_000,
        n_test=10_000,
        dropout=None,
        early_stopping=None,
        fisher="exact",
        fisher_num_examples=FISHER_N,
        penalty_step="proximal",
        eval_every=600,
        search_seed=0,
        n_val=N_VAL,
        lam_grid={"ewc": [1.0, 10.0, 100.0, 1000.0, 10000.0], "l2": [0.001, 0.01, 0.1, 1.0, 10.0]},
    ),
    "fig2b": dict(
        hidden=[400, 400],
        tasks=10,
        epochs_per_task=100,
        lr=0.1,
        batch_size=100,
        n_train=50_000,
        n_test=10_000,
        dropout=[0.2, 0.5],
        early_stopping=5,
        fisher="exact",
        fisher_num_examples=FISHER_N,
        penalty_step="proximal",
        n_val=N_VAL,
        lam_from="fig2a",
    ),
    "fig2c": dict(
        hidden=[100] * 6,
        tasks=2,
        epochs_per_task=100,
        lr=0.01,
        batch_size=100,
        n_train=60_000,
        n_test=10_000,
        squares=[8, 26],
        fisher="exact",
        fisher_num_examples=FISHER_N,
        penalty_step="proximal",
        search_seed=0,
        search_square=26,
        n_val=N_VAL,
        lam_grid={"ewc": [10.0, 100.0, 1000.0]},
    ),
}


# ---------------------------------------------------------------------------- files
