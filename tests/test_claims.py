"""ewc_lib.claims: glued numbers format as the book formats them; claims raise by default and
are reported (not raised) in class mode."""

from __future__ import annotations

import numpy as np
import pytest

from ewc_lib import claims
from ewc_lib.claims import ClaimFailed, check, class_mode, glue, glued


@pytest.mark.parametrize(
    "value,fmt",
    [
        (97.345, ".1f"),
        (np.float64(0.12345), ".3f"),
        (0.987, ".1%"),
        (12345, ","),
        (12345.0, ".3g"),
        (7, ""),
        (7, "d"),
        ("the first", ""),
        ("the first", "s"),
        (3.0, ".0f"),
        (1e-7, ".2e"),
        (np.int64(42), "d"),
    ],
)
def test_glued_formats_like_the_book(value, fmt):
    """The book pastes ``format_plain_text(repr, fmt)``; glued() must print the same."""
    from IPython.core.formatters import PlainTextFormatter
    from myst_nb.core.variables import format_plain_text

    if isinstance(value, np.generic):
        value = value.item()  # the notebooks glue Python numbers (numpy reprs do not parse)
    key = f"test-{fmt}-{value!r}"
    glue(key, value)
    text_plain = PlainTextFormatter()(value)
    book = format_plain_text(text_plain, fmt if fmt or True else "s")
    lab = glued(f"{key}:{fmt}")
    assert lab == book, (value, fmt, lab, book)


def test_glued_without_format_is_str_like_glue_text():
    from myst_nb.core.variables import format_plain_text

    glue("test-plain", "the second")
    assert glued("test-plain") == format_plain_text("'the second'", "s") == "the second"


def test_glued_unknown_key_is_readable_placeholder():
    text = glued("never-glued:.1f")
    assert "never-glued" in text and "{" not in text and "`" not in text


def test_class_mode_from_environment(monkeypatch):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    assert not class_mode()
    for on in ("1", "true", "yes"):
        monkeypatch.setenv(claims.CLASS_ENV, on)
        assert class_mode()
    monkeypatch.setenv(claims.CLASS_ENV, "0")
    assert not class_mode()


def test_default_raises_on_a_broken_claim(monkeypatch):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    with pytest.raises(AssertionError, match="EWC keeps A"):
        with check() as claim:
            claim(True, "SGD forgets A")
            claim(False, "EWC keeps A", "0.81 < 0.9")
    with pytest.raises(ClaimFailed):
        with check() as claim:
            claim(np.bool_(False), "numpy booleans count")


def test_default_is_silent_when_all_hold(monkeypatch, capsys):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    with check("title") as claim:
        assert claim(np.float64(2.0) > 1, "two exceeds one") is True
    assert capsys.readouterr().out == ""


def test_class_mode_reports_and_goes_on(monkeypatch, capsys):
    monkeypatch.setenv(claims.CLASS_ENV, "1")
    with check("Forgetting") as claim:
        claim(True, "SGD forgets A")
        claim(False, "EWC keeps A", "80.1 % < 90 %")
    out = capsys.readouterr().out  # no IPython kernel here: printed as Markdown text
    assert "1 of 2 claims hold" in out
    assert "| holds | `SGD forgets A` |" in out
    assert "| **does not hold** | `EWC keeps A` | 80.1 % < 90 % |" in out


def test_strict_argument_overrides_mode(monkeypatch):
    monkeypatch.setenv(claims.CLASS_ENV, "1")
    with pytest.raises(ClaimFailed):
        with check(strict=True) as claim:
            claim(False, "forced strict")


def test_exception_inside_block_is_not_masked(monkeypatch):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    with pytest.raises(ZeroDivisionError):
        with check() as claim:
            claim(False, "never checked")
            1 / 0


def test_claim_raises_by_default_like_assert(monkeypatch):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    assert claims.claim(np.float64(1.0) > 0, "positive") is None  # displays nothing, like assert
    with pytest.raises(AssertionError, match=r"EWC keeps A \(0.81 < 0.9\)"):
        claims.claim(False, "EWC keeps A", "0.81 < 0.9")


def test_claim_in_class_mode_reports_and_goes_on(monkeypatch, capsys):
    monkeypatch.setenv(claims.CLASS_ENV, "1")
    assert claims.claim(False, "EWC keeps A", "0.81 < 0.9") is None
    claims.claim(True, "SGD forgets A")
    out = capsys.readouterr().out
    assert "DOES NOT HOLD: EWC keeps A (0.81 < 0.9)" in out and "holds: SGD forgets A" in out


def test_claim_table_in_a_kernel_at_the_end_of_the_cell(monkeypatch):
    """In a Jupyter kernel, class mode collects a cell's claims and shows one table after it."""
    shown = []
    events = {}

    class FakeEvents:
        def register(self, name, fn):
            events[name] = fn

    class FakeShell:
        kernel = object()
        events = FakeEvents()

    monkeypatch.setenv(claims.CLASS_ENV, "1")
    monkeypatch.setattr(claims, "_kernel_shell", lambda: FakeShell)
    monkeypatch.setattr(claims, "_show_markdown", shown.append)
    monkeypatch.setattr(claims, "_HOOKED", [])
    claims.claim(True, "first")
    claims.claim(False, "second", "detail")
    assert not shown
    events["post_run_cell"](None)
    assert len(shown) == 1 and "1 of 2 claims hold" in shown[0] and "second" in shown[0]
    events["post_run_cell"](None)  # nothing pending: nothing shown
    assert len(shown) == 1


def test_claim_is_named_by_its_condition(monkeypatch):
    monkeypatch.delenv(claims.CLASS_ENV, raising=False)
    lam_ewc, threshold = 10.0, 100.0
    with pytest.raises(ClaimFailed) as info:
        claims.claim(lam_ewc >= threshold, detail=f"{lam_ewc} < {threshold}")
    assert str(info.value) == "lam_ewc >= threshold (10.0 < 100.0)"


def test_book_role_reads_only_glued_calls():
    """_ext/glued_eval.py: the book pastes {eval}`glued("key:fmt")` as {glue:text}`key:fmt`."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        from glued_eval import parse_glued
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    assert parse_glued('glued("fc-endA-sgd:.1f")') == ("fc-endA-sgd", ".1f")
    assert parse_glued(" glued('mnist-n-train:,') ") == ("mnist-n-train", ",")
    assert parse_glued('glued("mnist-ef-wins")') == ("mnist-ef-wins", "s")
    for bad in ("x", "f'{x:.1f}'", 'glued("a", "b")', "glued(key)", "other('a:.1f')", "glued("):
        with pytest.raises(ValueError):
            parse_glued(bad)
