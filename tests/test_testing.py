"""``ewc_lib.testing``: the shared tolerances and comparison helpers judge what they claim to."""

from __future__ import annotations

import doctest
import pathlib
import re

import numpy as np
import pytest
import torch

from ewc_lib import testing
from ewc_lib.claims import ClaimFailed
from ewc_lib.testing import EXACT_RTOL, assert_close, assert_within_std_errors, rel_error


def test_doctests():
    assert doctest.testmod(testing, optionflags=doctest.ELLIPSIS).failed == 0


def test_every_tolerance_is_documented_and_positive():
    source = pathlib.Path(testing.__file__).read_text(encoding="utf-8").splitlines()
    names = [n for n in testing.__all__ if n.isupper()]
    assert len(names) >= 10
    for name in names:
        value = getattr(testing, name)
        assert value > 0, name
        line = next(i for i, s in enumerate(source) if s.startswith(f"{name} = "))
        assert source[line - 1].startswith("#:"), f"{name} needs a '#:' line saying why it has its size"


def test_assert_close_accepts_tensors_arrays_and_numbers():
    assert_close(torch.tensor([1.0, 2.0], dtype=torch.float64), np.array([1.0, 2.0]), what="tensor vs array")
    assert_close(3.0, 3.0 * (1 + 1e-12), what="numbers")
    assert_close(torch.zeros(0), np.zeros(0), what="empty")


def test_assert_close_is_relative_to_the_largest_expected_entry():
    # the zero entry is off by 1e-11 absolute: small against the scale 1, so it passes ...
    assert_close([1.0, 1e-11], [1.0, 0.0], what="zero entry at scale one")
    # ... but not when the whole quantity is small
    with pytest.raises(ClaimFailed, match="small quantity"):
        assert_close([1e-9, 1e-11], [1e-9, 0.0], what="small quantity")


def test_assert_close_failure_names_what_where_and_how_much():
    with pytest.raises(AssertionError) as info:
        assert_close([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], what="the second entry", rtol=1e-6)
    msg = str(info.value)
    assert "the second entry" in msg and "flat index 1" in msg and "1 of 3 entries off" in msg


def test_assert_close_catches_nan_and_shape_mismatch():
    with pytest.raises(ClaimFailed):
        assert_close([float("nan"), 1.0], [1.0, 1.0], what="nan")
    with pytest.raises(ValueError, match="shape"):
        assert_close([1.0, 1.0], [[1.0, 1.0]], what="broadcast")
    with pytest.raises(TypeError, match="what"):
        assert_close(1.0, 1.0, what="")
    with pytest.raises(TypeError, match="actual"):
        assert_close("a", 1.0, what="string")


def test_assert_close_default_is_exact_rtol():
    assert_close(1.0 + 0.5 * EXACT_RTOL, 1.0, what="inside")
    with pytest.raises(ClaimFailed):
        assert_close(1.0 + 2 * EXACT_RTOL, 1.0, what="outside")


def test_assert_close_reports_in_class_mode(monkeypatch, capsys):
    monkeypatch.setenv("EWC_CLASS", "1")
    assert_close(1.0, 2.0, what="reported, not raised")
    assert "DOES NOT HOLD: reported, not raised" in capsys.readouterr().out


def test_rel_error():
    assert rel_error([1.0, 0.0], [2.0, 0.0]) == 0.5
    assert rel_error([1.0], [0.0], scale=4.0) == 0.25
    with pytest.raises(ValueError, match="scale"):
        rel_error([1.0], [0.0])
    with pytest.raises(ValueError, match="scale"):
        rel_error([1.0], [1.0], scale=-1.0)
    with pytest.raises(ValueError, match="shape"):
        rel_error([1.0, 2.0], [1.0])


def test_within_std_errors():
    z = assert_within_std_errors([1.3, 2.0], [1.0, 2.0], [0.1, 0.0], what="three sigma")
    assert z == pytest.approx(3.0)
    with pytest.raises(ClaimFailed, match="six sigma"):
        assert_within_std_errors([1.6], [1.0], [0.1], what="six sigma")
    with pytest.raises(ClaimFailed, match="zero error"):  # zero standard error: must be exact
        assert_within_std_errors([1.0 + 1e-6], [1.0], [0.0], what="zero error")
    with pytest.raises(ValueError, match="std_error"):
        assert_within_std_errors([1.0], [1.0], [-0.1], what="negative")


def test_entrywise_judges_each_entry_by_its_own_size():
    expected = [1.0, 1e-6]
    assert_close([1.0, 1e-6 * (1 + 1e-11)], expected, what="fine", entrywise=True)
    assert_close([1.0, 1.5e-6], expected, what="scaled by the largest entry: passes", rtol=1e-6)
    with pytest.raises(ClaimFailed, match="entry by entry"):
        assert_close([1.0, 1.5e-6], expected, what="entry by entry: fails", rtol=1e-6, entrywise=True)
    with pytest.raises(ValueError, match="not both"):
        assert_close(1.0, 1.0, what="both", scale=1.0, entrywise=True)


def test_attribute_comments_do_not_start_with_a_type():
    """Sphinx's napoleon reads the first line of a ``#:`` comment as ``type: description`` when it
    has a colon followed by text, and then looks the 'type' up as a class: a nitpicky build fails
    on it. No module of ewc_lib may start an attribute comment that way."""
    root = pathlib.Path(testing.__file__).resolve().parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            text = line.strip()
            if not text.startswith("#:") or (i and lines[i - 1].strip().startswith("#:")):
                continue
            body = re.sub(r"``[^`]*``", "", re.sub(r":\w+:`[^`]*`", "", text[2:]))
            if re.search(r"(?<!:):(?!:)\s*\S", body):
                bad.append(f"{path.relative_to(root.parent)}:{i + 1}: {text}")
    assert not bad, "reword these first lines (no 'x: y'):\n" + "\n".join(bad)


def test_scale_may_be_a_tensor_or_array_of_one_number():
    assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-12]), what="t", scale=torch.tensor(2.0))
    assert_close([1.0], [1.0], what="a", scale=np.array([3.0]))
    with pytest.raises(ValueError, match="one number"):
        assert_close([1.0, 2.0], [1.0, 2.0], what="two scales", scale=[1.0, 2.0])
