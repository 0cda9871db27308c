"""Statements and their checks point at each other (issue 14, items 4 and 5).

* Every theorem, lemma, proposition and corollary in a chapter is followed (after its proof) by
  a ``**Checked**`` paragraph naming at least one section that checks it by computation
  (``{ref}`chk-...```) and at least one test (```tests/test_x.py::test_name```), or saying
  ``**Checked**: not by computation; <why>.``
* Every ``chk-`` label exists exactly once, in a notebook or in a chapter.
* Every notebook opens with a ``## Claims checked here`` table whose rows link what they check
  and where (a ``chk-`` section of the same notebook).
* Both ways: a chapter statement checked in a notebook appears in that notebook's table, and a
  statement a notebook's table lists names that notebook in its ``**Checked**`` line.

Plain text parsing of the MyST sources, so the test runs without building the book.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.md"))
STATEMENT_KINDS = {"theorem", "lemma", "proposition", "corollary"}

OPEN = re.compile(r"^(`{3,}|:{3,})\{prf:([a-z]+)\}")
LABEL = re.compile(r"^:label:\s*(\S+)\s*$")
ANY_TARGET = re.compile(r"^\(([\w-]+)\)=\s*$")  # a MyST label line, (label)=
TARGET = re.compile(r"^\((chk-[a-z0-9-]+)\)=\s*$")  # ... of a section that checks something
CHK_REF = re.compile(r"\{ref\}`(?:[^`<]*<)?(chk-[a-z0-9-]+)>?`")
PRF_REF = re.compile(r"\{prf:ref\}`(?:[^`<]*<)?([A-Za-z0-9_-]+)>?`")
TEST_REF = re.compile(r"`(tests/[A-Za-z0-9_/]+\.py)::([A-Za-z0-9_]+)`")
NOT_COMPUTED = re.compile(r"^\*\*Checked\*\*: not by computation; \S")


@dataclasses.dataclass
class Statement:
    label: str
    kind: str
    path: pathlib.Path
    line: int
    checked: str | None  # the **Checked** paragraph, or None


def _blocks(lines):
    """(kind, label, first line, last line) of every prf directive, in order."""
    out, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, kind, label = m.group(1), m.group(2), None
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            lab = LABEL.match(lines[j])
            if lab and label is None:
                label = lab.group(1)
            j += 1
        out.append((kind, label, i, j))
        i = j + 1
    return out


def _paragraph(lines, start):
    para = []
    for line in lines[start:]:
        if not line.strip():
            break
        para.append(line.strip())
    return " ".join(para)


def statements() -> list[Statement]:
    found = []
    for path in CHAPTERS:
        lines = path.read_text(encoding="utf-8").splitlines()
        blocks = _blocks(lines)
        for k, (kind, label, first, last) in enumerate(blocks):
            if kind not in STATEMENT_KINDS:
                continue
            end = last
            if k + 1 < len(blocks) and blocks[k + 1][0] == "proof":
                between = lines[last + 1 : blocks[k + 1][2]]
                if all(not s.strip() for s in between):
                    end = blocks[k + 1][3]
            stop = next(
                (b[2] for b in blocks[k + 1 :] if b[0] != "proof" and b[2] > end),
                len(lines),
            )
            checked = None
            for n in range(end + 1, stop):
                line = lines[n]
                if line.startswith("#") or TARGET.match(line):
                    break
                if line.startswith("**Checked**"):
                    checked = _paragraph(lines, n)
                    break
            found.append(Statement(label or f"<unlabelled {kind}>", kind, path, first + 1, checked))
    return found


def chk_targets() -> dict[str, list[pathlib.Path]]:
    where: dict[str, list[pathlib.Path]] = {}
    for path in CHAPTERS + NOTEBOOKS:
        for line in path.read_text(encoding="utf-8").splitlines():
            m = TARGET.match(line)
            if m:
                where.setdefault(m.group(1), []).append(path)
    return where


def claims_table(path: pathlib.Path) -> list[str] | None:
    """The rows of the notebook's "Claims checked here" table (None if there is no such section)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("## Claims checked here")
    except ValueError:
        return None
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            rows.append(line)
    return rows[1:]  # without the header row


STATEMENTS = statements()
TARGETS = chk_targets()
ALL_PRF_LABELS = {
    label for path in CHAPTERS for (_, label, _, _) in _blocks(path.read_text(encoding="utf-8").splitlines()) if label
}


def _rel(p: pathlib.Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_statements_found():
    assert len(STATEMENTS) >= 15, [s.label for s in STATEMENTS]
    assert all(not s.label.startswith("<") for s in STATEMENTS), "every statement needs a :label:"


@pytest.mark.parametrize("st", STATEMENTS, ids=lambda s: s.label)
def test_statement_says_where_it_is_checked(st):
    where = f"{_rel(st.path)}:{st.line} ({st.kind} {st.label})"
    assert st.checked, f"{where}: add a '**Checked** in {{ref}}`chk-...` and by `tests/...::test_...`.' paragraph"
    if NOT_COMPUTED.match(st.checked):
        return
    refs, tests = CHK_REF.findall(st.checked), TEST_REF.findall(st.checked)
    assert refs, f"{where}: the Checked paragraph names no {{ref}}`chk-...` section"
    assert tests, f"{where}: the Checked paragraph names no `tests/<file>.py::<test>`"
    for label in refs:
        assert label in TARGETS, f"{where}: no (({label}))= target anywhere"
    for file, name in tests:
        test_file = ROOT / file
        assert test_file.is_file(), f"{where}: {file} does not exist"
        assert re.search(rf"^(async )?def {name}\(", test_file.read_text(encoding="utf-8"), re.M), (
            f"{where}: {file} has no test function {name}"
        )


def test_chk_labels_are_unique():
    dup = {k: [_rel(p) for p in v] for k, v in TARGETS.items() if len(v) > 1}
    assert not dup, f"chk- labels defined more than once: {dup}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_opens_with_claims_table(path):
    rows = claims_table(path)
    assert rows is not None, f"{_rel(path)} has no '## Claims checked here' section"
    assert rows, f"{_rel(path)}: the Claims checked here table is empty"
    text = path.read_text(encoding="utf-8")
    first_h2 = re.search(r"^## .*$", text, re.M)
    assert first_h2 and first_h2.group(0) == "## Claims checked here", (
        f"{_rel(path)}: 'Claims checked here' must be the first section"
    )
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 3 and all(cells), f"{_rel(path)}: row needs Claim | Stated in | Checked in: {row}"
        chks = CHK_REF.findall(cells[2])
        assert chks, f"{_rel(path)}: 'Checked in' must link a chk- section: {row}"
        for label in chks:
            assert TARGETS.get(label) == [path], f"{_rel(path)}: {label} is not a section of this notebook"
        for label in PRF_REF.findall(cells[1]):
            assert label in ALL_PRF_LABELS, f"{_rel(path)}: no prf label {label} in book/"


@pytest.mark.parametrize("st", [s for s in STATEMENTS if s.checked], ids=lambda s: s.label)
def test_both_ways(st):
    """A statement checked in a notebook is in its table, with that section."""
    for label in CHK_REF.findall(st.checked):
        for path in TARGETS.get(label, []):
            if path.parent.name != "notebooks":
                continue  # a chapter checking its own statement in a code cell needs no table
            rows = claims_table(path) or []
            assert any(st.label in PRF_REF.findall(r) and label in CHK_REF.findall(r) for r in rows), (
                f"{_rel(path)}: its Claims checked here table needs a row with {{prf:ref}}`{st.label}` "
                f"and {{ref}}`{label}` ({_rel(st.path)} says it is checked there)"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_table_statements_point_back(path):
    """A statement a notebook's table lists names that notebook in its Checked line."""
    by_label = {s.label: s for s in STATEMENTS}
    mine = {label for label, files in TARGETS.items() if files == [path]}
    for row in claims_table(path) or []:
        for label in PRF_REF.findall(row.split("|")[2] if row.count("|") >= 3 else ""):
            st = by_label.get(label)
            if st is None:
                continue  # a definition or assumption: no Checked line
            assert st.checked and set(CHK_REF.findall(st.checked)) & mine, (
                f"{_rel(path)} lists {label} as checked here, but {_rel(st.path)}:{st.line} does not name a "
                f"chk- section of this notebook in its Checked line"
            )


def test_no_bare_ref_to_a_heading_with_math():
    """``{ref}`label``` uses the heading as link text, and Sphinx pastes a heading's math as raw
    TeX (``\\lambda``) into it: such a reference needs its own text, ``{ref}`text <label>```."""
    headings = {}
    for path in CHAPTERS + NOTEBOOKS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = ANY_TARGET.match(line)
            if not m:
                continue
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or ANY_TARGET.match(lines[j])):
                j += 1
            if j < len(lines) and lines[j].startswith("#"):
                headings[m.group(1)] = lines[j]
    bad = []
    for path in CHAPTERS + NOTEBOOKS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for label in re.findall(r"\{ref\}`([\w-]+)`", line):
                if "$" in headings.get(label, ""):
                    bad.append(f"{_rel(path)}:{n}: {{ref}}`{label}` -> {headings[label]}")
    assert not bad, "give these references their own text:\n" + "\n".join(bad)
