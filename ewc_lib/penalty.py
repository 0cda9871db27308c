"""Quadratic consolidation penalties: EWC (diagonal Fisher) and L2 (identity).

The EWC penalty of :cite:`kirkpatrick2017overcoming`, equation (3), for one old task is

    penalty(theta) = (lam / 2) * sum_i F_i * (theta_i - theta_star_i) ** 2

with ``theta_star`` the parameters at the end of the old task (the *anchor*) and ``F`` the
diagonal of the Fisher at the anchor, as returned by :func:`~ewc_lib.curvature.fisher_diagonal`.

Conventions (kept in the whole book)
------------------------------------
* ``F`` is a **mean** over the old task's data points (not a sum). With a task loss that
  is also a mean, Bayes' rule gives ``lam = N_A / N_B`` (``1`` for equal-sized tasks); a
  summed loss with a summed Fisher gives ``lam = 1``.
* The factor ``1/2`` is part of the penalty, so its gradient is ``lam * F * (theta -
  theta_star)`` and its Hessian is ``lam * diag(F)``.

Several old tasks
-----------------
``mode="separate"`` (Kirkpatrick et al.): one term per consolidated task, each anchored at
the parameters at the end of *that* task,

    penalty(theta) = (lam / 2) * sum_t sum_i F_{t,i} * (theta_i - theta_star_{t,i}) ** 2.

``mode="online"`` (Huszar's recursion; with ``gamma < 1`` the online EWC of Schwarz et al.):
a single term anchored at the **latest** consolidated parameters, whose Fisher is updated as
``F <- gamma * F + F_new`` at every consolidation,

    penalty(theta) = (lam / 2) * sum_i F_i * (theta_i - theta_star_{T,i}) ** 2.

After one task both modes give the same penalty.

>>> import torch
>>> from ewc_lib import EWCPenalty
>>> net = torch.nn.Linear(2, 1)
>>> fisher = {n: torch.ones_like(p) for n, p in net.named_parameters()}
>>> pen = EWCPenalty(lam=10.0)
>>> pen.consolidate(net, fisher)
>>> pen(net).item()          # zero at the anchor
0.0
>>> with torch.no_grad():
...     net.bias += 1.0
>>> pen(net).item()          # (10 / 2) * 1 * 1 ** 2
5.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from ._checks import plain_number, trainable_parameters
from ._penalty_checks import _check_fisher, _check_lam, _check_mode_gamma, _checked_state

__all__ = ["EWCPenalty", "L2Penalty"]

#: Relative tolerance for L2Penalty's stored stiffness (1, or the online sum of gamma powers)
#: when a state is loaded: the recursion F <- gamma F + 1 rounds at every step, ~1e-7 in float32.
_L2_RTOL = 1e-5


def _trainable(model) -> dict[str, torch.Tensor]:
    return dict(trainable_parameters(model, purpose="to consolidate"))


class EWCPenalty:
    r"""The EWC penalty ``(lam/2) * sum_i F_i (theta_i - theta_star_i)**2`` over old tasks.

    Book: equation (3) and the value of ``lam`` are derived in :ref:`sec-ewc-penalty`
    (:prf:ref:`thm-ewc-penalty`); several tasks and the online variant in
    :ref:`sec-ewc-penalty-several` and :ref:`sec-ewc-penalty-online`. Checked in
    :ref:`sec-diagonal-and-multitask`.

    Parameters
    ----------
    lam : float >= 0
        Strength of the penalty. With a *mean* task loss and a *mean* Fisher (the book's and
        :func:`~ewc_lib.curvature.fisher_diagonal`'s convention), the Bayesian value is
        ``N_A / N_B`` -- 1 for tasks of equal size. Practice uses larger values.
    mode : {"separate", "online"}
        ``"separate"``: one term per consolidated task, anchored at the parameters at the end
        of that task (Kirkpatrick et al. 2017). ``"online"``: a single term anchored at the
        latest consolidated parameters with ``F <- gamma * F + F_new`` (Huszar 2018 for
        ``gamma = 1``, online EWC of Schwarz et al. 2018 for ``gamma < 1``).
    gamma : float in (0, 1]
        Decay of the accumulated Fisher in ``"online"`` mode. Must be 1 for ``"separate"``.

    Notes
    -----
    * :meth:`consolidate` copies (detaches) the parameters and the Fisher; later changes of
      the model or of the Fisher dict do not change the stored anchor.
    * :meth:`penalty` (also ``pen(model)``) is differentiable with respect to the model's
      parameters; its gradient is ``lam * sum_t F_t * (theta - theta_star_t)``.
    * Every trainable parameter of the model must have a Fisher entry of the same shape;
      parameters with ``requires_grad=False`` are not penalised.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> pen = EWCPenalty(lam=100.0, mode="online", gamma=0.9)
    >>> pen.consolidate(net, {n: torch.rand_like(p) for n, p in net.named_parameters()})
    >>> pen.num_tasks, pen(net).item()
    (1, 0.0)
    """

    def __init__(self, lam, mode: str = "separate", gamma: float = 1.0):
        self.lam = _check_lam(lam)
        self.mode, self.gamma = _check_mode_gamma(mode, gamma)
        self._anchors: list[dict[str, torch.Tensor]] = []
        self._fishers: list[dict[str, torch.Tensor]] = []
        self._num_tasks = 0

    # ------------------------------------------------------------------ state
    @property
    def num_tasks(self) -> int:
        """How many times :meth:`consolidate` was called since creation or :meth:`reset`."""
        return self._num_tasks

    @property
    def num_terms(self) -> int:
        """Number of stored quadratic terms, ``num_tasks`` (separate) or at most 1 (online)."""
        return len(self._anchors)

    @property
    def anchors(self) -> list[dict[str, torch.Tensor]]:
        """The stored anchors ``theta_star`` (one dict per term; copies)."""
        return [{n: a.clone() for n, a in d.items()} for d in self._anchors]

    @property
    def fishers(self) -> list[dict[str, torch.Tensor]]:
        """The stored Fisher diagonals (one dict per term, decayed/summed in online mode)."""
        return [{n: f.clone() for n, f in d.items()} for d in self._fishers]

    def reset(self) -> None:
        """Forget every consolidated task (the penalty becomes 0)."""
        self._anchors, self._fishers, self._num_tasks = [], [], 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lam={self.lam!r}, mode={self.mode!r}, "
            f"gamma={self.gamma!r}, num_tasks={self._num_tasks})"
        )

    # ------------------------------------------------------------ consolidate
    def consolidate(self, model: nn.Module, fisher) -> None:
        """Store the model's current parameters as an anchor, with the Fisher diagonal ``fisher``.

        ``fisher`` maps every trainable parameter name of ``model`` to a tensor of that
        parameter's shape with finite entries ``>= 0`` (as from ``ewc_lib.fisher_diagonal``).
        In ``"separate"`` mode a new term is appended; in ``"online"`` mode the single term
        becomes anchor = current parameters, ``F = gamma * F_old + fisher``.
        """
        params = _trainable(model)
        if self._anchors:
            old = self._anchors[0]
            if set(old) != set(params) or any(old[n].shape != p.shape for n, p in params.items()):
                raise ValueError(
                    "model: its parameters differ from those of the earlier consolidations (names or shapes)"
                )
            self._check_device(params)
        fisher = _check_fisher(fisher, params)
        anchor = {n: p.detach().clone() for n, p in params.items()}
        if self.mode == "separate" or not self._anchors:
            self._anchors.append(anchor)
            self._fishers.append(fisher)
        else:
            old = self._fishers[0]
            self._fishers[0] = {n: self.gamma * old[n].to(fisher[n].dtype) + fisher[n] for n in fisher}
            self._anchors[0] = anchor
        self._num_tasks += 1

    # ---------------------------------------------------------------- penalty
    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The scalar ``(lam/2) * sum_terms sum_i F_i (theta_i - theta_star_i)**2`` (a 0-dim tensor).

        Returns a zero tensor when nothing has been consolidated yet. Differentiable with
        respect to the model's parameters.
        """
        params = _trainable(model)
        if not self._anchors:
            p0 = next(iter(params.values()))
            return torch.zeros((), dtype=p0.dtype, device=p0.device)
        names = self._anchors[0].keys()
        if set(params) != set(names):
            raise ValueError(
                f"model: trainable parameter names {sorted(params)} differ from the consolidated ones {sorted(names)}"
            )
        self._check_device(params)
        total = None
        for anchor, fisher in zip(self._anchors, self._fishers):
            for name, p in params.items():
                if p.shape != anchor[name].shape:
                    raise ValueError(
                        f"model: parameter {name!r} has shape {tuple(p.shape)}, "
                        f"the anchor has {tuple(anchor[name].shape)}"
                    )
                term = (fisher[name] * (p - anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        return 0.5 * self.lam * total

    __call__ = penalty

    def max_curvature(self) -> float:
        """The largest eigenvalue of the penalty's Hessian, ``lam * max_i sum_t F_{t,i}``.

        The penalty is a quadratic with the diagonal Hessian ``lam * sum_t diag(F_t)``, so plain
        gradient descent with step size ``lr`` on the penalty alone converges only if
        ``lr * max_curvature() < 2``; above that, the parameter with the largest Fisher
        oscillates with growing amplitude (a common reason why EWC with a large ``lam``
        "collapses" under SGD). Returns 0.0 when nothing is consolidated.

        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> pen = EWCPenalty(100.0)
        >>> pen.consolidate(net, {"weight": torch.tensor([[0.25]])})
        >>> pen.consolidate(net, {"weight": torch.tensor([[0.5]])})
        >>> pen.max_curvature()     # 100 * (0.25 + 0.5)
        75.0
        """
        if not self._fishers:
            return 0.0
        names = self._fishers[0].keys()
        return self.lam * max(float(sum(f[n] for f in self._fishers).max()) for n in names)

    @torch.no_grad()
    def proximal_step(self, model: nn.Module, lr) -> None:
        r"""Apply the penalty's part of one SGD step in closed form (an implicit step).

        Plain SGD on ``L_B + penalty`` takes ``theta - lr * (grad L_B + lam * sum_t F_t
        (theta - theta*_t))``, which diverges once ``lr * max_curvature() >= 2``. The
        proximal (forward-backward) step instead takes the data step ``theta' = theta - lr *
        grad L_B`` (the optimiser's ordinary step) and then minimises ``(1/2)||u - theta'||^2 +
        lr * penalty(u)`` exactly, which for the diagonal quadratic is, per parameter,

            u = (theta' + lr * lam * sum_t F_t * theta*_t) / (1 + lr * lam * sum_t F_t).

        Both steps have the same fixed points (the stationary points of ``L_B + penalty``);
        they agree to ``O(lr^2)`` per step, and the proximal one is stable for every ``lam``.
        Call it right after ``optimizer.step()`` on the data loss alone. Does nothing when
        nothing is consolidated.

        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> pen = EWCPenalty(lam=1e6)              # far beyond plain SGD's stability bound
        >>> pen.consolidate(net, {"weight": torch.ones(1, 1)})
        >>> anchor = net.weight.item()
        >>> with torch.no_grad():
        ...     net.weight += 1.0
        >>> pen.proximal_step(net, lr=0.1)
        >>> abs(net.weight.item() - anchor) < 1e-4   # pulled back, not thrown out
        True
        """
        lr = plain_number(lr)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
        if not self._anchors:
            return
        params = _trainable(model)
        if set(params) != set(self._anchors[0]):
            raise ValueError(
                f"model: trainable parameter names {sorted(params)} differ from the "
                f"consolidated ones {sorted(self._anchors[0])}"
            )
        self._check_device(params)
        for name, p in params.items():
            if p.shape != self._anchors[0][name].shape:
                raise ValueError(
                    f"model: parameter {name!r} has shape {tuple(p.shape)}, "
                    f"the anchor has {tuple(self._anchors[0][name].shape)}"
                )
        step = float(lr) * self.lam
        for name, p in params.items():
            stiffness = sum(f[name] for f in self._fishers)
            pull = sum(f[name] * a[name] for f, a in zip(self._fishers, self._anchors))
            p.copy_((p + step * pull) / (1.0 + step * stiffness))

    def _check_device(self, params) -> None:
        for name, p in params.items():
            stored = self._anchors[0][name].device
            if p.device != stored:
                raise ValueError(
                    f"model: parameter {name!r} is on {p.device}, the consolidated anchors and Fishers on "
                    f"{stored}; move them with penalty.to({str(p.device)!r})"
                )

    def to(self, device=None, dtype=None) -> EWCPenalty:
        """Move (and/or cast) the stored anchors and Fishers, like ``nn.Module.to``; returns ``self``.

        Call it after moving the model, e.g. ``model.to(device); penalty.to(device)``: the
        penalty, its gradient and :meth:`proximal_step` then work on the new device / dtype.
        ``dtype`` must be a floating-point dtype. Nothing else is stored, so this covers all
        the state of :meth:`penalty`, :meth:`proximal_step` and :meth:`max_curvature`.
        """
        if dtype is not None:
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise TypeError(f"dtype: expected a floating-point torch.dtype or None, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise TypeError(f"device: expected a torch.device or a device string, got {device!r}") from err
        self._anchors = [{n: t.to(device=device, dtype=dtype) for n, t in d.items()} for d in self._anchors]
        self._fishers = [{n: t.to(device=device, dtype=dtype) for n, t in d.items()} for d in self._fishers]
        return self

    # ------------------------------------------------------------- save/load
    def state_dict(self) -> dict:
        """A dict with ``lam``, ``mode``, ``gamma``, ``num_tasks``, ``anchors`` and ``fishers``."""
        return {
            "lam": self.lam,
            "mode": self.mode,
            "gamma": self.gamma,
            "num_tasks": self._num_tasks,
            "anchors": self.anchors,
            "fishers": self.fishers,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`, checking everything :meth:`consolidate` guarantees.

        * ``lam``, ``mode``, ``gamma``: as in the constructor;
        * ``num_tasks``: an int >= 0, consistent with the number of stored terms: equal to it
          in ``"separate"`` mode; in ``"online"`` mode one term if ``num_tasks >= 1``, none if 0;
        * ``anchors``, ``fishers``: lists (or tuples) of the same length of dicts name ->
          tensor; every term has the same names (str) and shapes, each anchor is a finite
          floating-point tensor, each Fisher a finite tensor >= 0 of its anchor's shape (cast
          to the anchor's dtype and device, as :meth:`consolidate` does).

        Raises ``TypeError`` (wrong types) or ``ValueError`` (wrong values) naming the field,
        e.g. ``anchors[1]['0.weight']``; on error nothing is changed.
        """
        lam, mode, gamma, num_tasks, new_anchors, new_fishers = _checked_state(state)
        self._check_loaded_fishers(new_fishers, mode, gamma, num_tasks)
        self.lam, self.mode, self.gamma = lam, mode, gamma
        self._anchors, self._fishers, self._num_tasks = new_anchors, new_fishers, num_tasks

    def _check_loaded_fishers(self, fishers, mode, gamma, num_tasks) -> None:
        """Hook for subclasses: extra conditions on loaded Fishers (none for EWC)."""


class L2Penalty(EWCPenalty):
    """The L2 penalty ``(lam/2) * sum_i (theta_i - theta_star_i)**2``: EWC with ``F = 1``.

    Book: the L2 baseline of the paper's Figure 2A, :ref:`sec-forgetting-curves`.

    Same interface as :class:`EWCPenalty`, except that :meth:`consolidate` takes no Fisher
    (only ``fisher=None``): every parameter gets the same stiffness, which is why L2 protects
    the old task but leaves little room to learn a new one (the paper's Figure 2A).

    >>> import torch
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> pen = L2Penalty(lam=2.0)
    >>> pen.consolidate(net)
    >>> with torch.no_grad():
    ...     net.weight += 3.0
    >>> pen(net).item()     # (2 / 2) * 3 ** 2
    9.0
    """

    def _check_loaded_fishers(self, fishers, mode, gamma, num_tasks) -> None:
        """L2's stiffness is 1 per term (separate) or ``sum_{k < T} gamma^k`` (online, T tasks)."""
        expected = 1.0 if mode == "separate" else sum(gamma**k for k in range(num_tasks))
        for t, f in enumerate(fishers):
            for name, v in f.items():
                if not torch.allclose(v, torch.full_like(v, expected), rtol=_L2_RTOL, atol=0.0):
                    raise ValueError(
                        f"fishers[{t}][{name!r}]: an L2Penalty stores the stiffness {expected:.6g} "
                        f"everywhere (mode={mode!r}, {num_tasks} task(s)), found values in "
                        f"[{float(v.min()):.6g}, {float(v.max()):.6g}]"
                    )

    def consolidate(self, model: nn.Module, fisher=None) -> None:
        """Anchor at a copy of the trainable parameters of ``model``, with ``F = 1`` (no Fisher: pass None)."""
        if fisher is not None:
            raise TypeError(
                "fisher: L2Penalty uses F = 1 for every parameter; pass fisher=None "
                "(or use EWCPenalty for a Fisher-weighted penalty)"
            )
        params = _trainable(model)
        super().consolidate(model, {n: torch.ones_like(p.detach()) for n, p in params.items()})
