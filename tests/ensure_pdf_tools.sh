#!/usr/bin/env bash
# Make sure the tools that read the book's PDF are there (tests/test_pdf.py): pdftotext,
# pdfinfo and pdfimages from Debian's poppler-utils. The PDF itself is printed by the
# Chromium that tests/ensure_browser.sh installs. Called by `make pdf` and `make test`.
# Installs poppler-utils through apt when missing (as root, or through sudo when available).
set -euo pipefail
if command -v pdftotext >/dev/null 2>&1 && command -v pdfinfo >/dev/null 2>&1 \
    && command -v pdfimages >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "poppler-utils (pdftotext) is missing and this is not root: run 'sudo apt-get install poppler-utils'" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "pdftotext is missing and apt-get is not available: install poppler-utils" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends poppler-utils
pdftotext -v 2>&1 | head -1
