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
bash "$(dirname "$0")/apt_install.sh" "poppler-utils (pdftotext)" --no-install-recommends poppler-utils
pdftotext -v 2>&1 | head -1
