"""Tests of ewc_lib.plotting."""

from __future__ import annotations

import doctest

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ewc_lib import plotting  # noqa: E402


def test_doctests():
    assert doctest.testmod(plotting).failed == 0


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_precision_ellipse_is_the_contour_at_k_standard_deviations(k):
    mean = np.array([0.5, -1.0])
    prec = np.array([[3.0, 1.2], [1.2, 1.0]])
    fig, ax = plt.subplots()
    try:
        (patch,) = plotting.precision_ellipse(ax, mean, prec, n_std=(k,), color="k", label="p")
        # the patch transform maps the unit circle onto the drawn ellipse (data coordinates)
        angles = np.linspace(0, 2 * np.pi, 50)
        points = patch.get_patch_transform().transform(np.c_[np.cos(angles), np.sin(angles)])
    finally:
        plt.close(fig)
    d = points - mean
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", d, prec, d), k**2, rtol=1e-6)
    assert patch.get_label() == "p" and not patch.get_fill()


def test_precision_ellipse_label_on_the_first_only_and_alphas():
    fig, ax = plt.subplots()
    try:
        patches = plotting.precision_ellipse(ax, [0, 0], np.eye(2), n_std=(1, 2), alphas=(1.0, 0.5), label="x")
        assert [p.get_label() for p in patches][0] == "x" and not patches[1].get_label().startswith("x")
        assert [p.get_alpha() for p in patches] == [1.0, 0.5]
        with pytest.raises(ValueError, match="alphas"):
            plotting.precision_ellipse(ax, [0, 0], np.eye(2), n_std=(1, 2), alphas=(1.0,))
    finally:
        plt.close(fig)
