"""Every entry of ``references.bib`` can be opened: it carries a DOI, an arXiv id or a URL,
and the few that the book leans on carry the exact identifiers it quotes (issue 13).

The bibliography style (pybtex ``plain``, ``bibtex_default_style`` in ``_config.yml``) prints
``doi``, ``eprint`` (arXiv) and ``url`` as links; ``tests/test_browser.py`` checks on the
built bibliography page that every entry shows one.
"""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

pybtex = pytest.importorskip("pybtex.database")


@pytest.fixture(scope="module")
def entries():
    return pybtex.parse_file(str(ROOT / "references.bib")).entries


def _fields(entry):
    return {k.lower(): v for k, v in entry.fields.items()}


def test_every_entry_has_a_link(entries):
    missing = [key for key, e in entries.items() if not {"doi", "eprint", "url"} & set(_fields(e))]
    assert not missing, f"entries without doi, eprint (arXiv) or url: {missing}"


def test_identifiers_are_well_formed(entries):
    bad = []
    for key, e in entries.items():
        f = _fields(e)
        if "doi" in f and not re.fullmatch(r"10\.\d{4,9}/\S+", f["doi"]):
            bad.append(f"{key}: doi {f['doi']!r}")
        if "eprint" in f:
            if f.get("archiveprefix", "").lower() != "arxiv":
                bad.append(f"{key}: eprint without archiveprefix = arXiv")
            if not re.fullmatch(r"\d{4}\.\d{4,5}", f["eprint"]):
                bad.append(f"{key}: arXiv id {f['eprint']!r}")
        if "url" in f and not f["url"].startswith(("https://", "http://")):
            bad.append(f"{key}: url {f['url']!r}")
        if "arxiv:" in f.get("note", "").lower() + f.get("howpublished", "").lower():
            bad.append(f"{key}: arXiv id in a text field (use eprint, which becomes a link)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "key,field,value",
    [
        ("kirkpatrick2017overcoming", "doi", "10.1073/pnas.1611835114"),
        ("kirkpatrick2017overcoming", "eprint", "1612.00796"),
        ("kunstner2019limitations", "eprint", "1905.12558"),
        ("kunstner2019code", "url", "https://github.com/fKunstner/limitations-empirical-fisher"),
    ],
)
def test_key_sources(entries, key, field, value):
    assert _fields(entries[key]).get(field) == value
