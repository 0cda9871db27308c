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
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Debian's chromium is missing and this is not root: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and apt-get is not available: install Chromium and set EWC_CHROMIUM" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
"$CHROMIUM" --version
