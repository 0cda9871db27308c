#!/usr/bin/env bash
# Make sure Debian's Chromium is there for the real-browser tests (tests/test_browser.py,
# tests/test_jupyterlab.py). Called by `make test` before pytest. Installs the `chromium`
# package through apt when it is missing (as root, or through sudo when available).
# Playwright never downloads a browser here: the tests drive this Chromium through
# `executable_path` (override the path with EWC_CHROMIUM).
set -euo pipefail
CHROMIUM="${EWC_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  "$CHROMIUM" --version 2>/dev/null || true
  exit 0
fi
if [ "${EWC_CHROMIUM:-}" != "" ]; then
  echo "EWC_CHROMIUM=$EWC_CHROMIUM is not an executable" >&2
  exit 1
fi
bash "$(dirname "$0")/apt_install.sh" "Debian's chromium (or set EWC_CHROMIUM)" chromium
"$CHROMIUM" --version
