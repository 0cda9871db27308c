"""Tests of ewc_lib.moments (the identities themselves are tested on Kunstner's problems in
tests/test_kunstner.py): examples, and the names ewc_lib.kunstner re-exports."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from ewc_lib import kunstner, moments


def test_doctests():
    result = doctest.testmod(moments)
    assert result.attempted > 0 and result.failed == 0


def test_reexported_by_kunstner():
    for name in moments.__all__:
        assert getattr(kunstner, name) is getattr(moments, name) and name in kunstner.__all__


def test_empirical_fisher_is_covariance_plus_mean_outer_product():
    grads = np.random.default_rng(0).standard_normal((50, 3))
    ef, cov, mean = moments.gradient_moments(grads)
    np.testing.assert_allclose(ef, cov + np.outer(mean, mean), rtol=1e-12)
    with pytest.raises(ValueError, match="grads"):
        moments.gradient_moments(np.ones(3))
