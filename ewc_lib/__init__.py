"""ewc_lib: the tested library behind the book "Elastic Weight Consolidation, derived".

Conventions kept everywhere in the library and the book:

* Curvature matrices (Fisher, empirical Fisher, Hessian, GGN) are **means over data points**
  of per-example quantities. Laplace-style libraries that use summed losses work with
  ``N * F``.
* The EWC penalty is ``(lam / 2) * sum_i F_i (theta_i - theta_star_i) ** 2`` with ``F`` the
  mean-over-data Fisher diagonal; with a mean task loss, Bayes gives ``lam = N_A / N_B``.
* Every random draw takes a seed or a ``torch.Generator``.
"""

from . import (  # noqa: F401
    continual,
    data,
    laplace,
    linear_gaussian,
    models,
    overlap,
    plotting,
    progress,
    reference,
    symbolic,
    tasks,
)
from .curvature import *  # noqa: F401,F403
from .data import load_mnist  # noqa: F401
from .models import mlp  # noqa: F401
from .penalty import *  # noqa: F401,F403

__version__ = "0.1.0"
