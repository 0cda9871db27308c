#!/usr/bin/env bash
# Install Debian packages through apt for the test tools (called by tests/ensure_browser.sh and
# tests/ensure_pdf_tools.sh when a tool is missing): as root, or through passwordless sudo.
#   bash tests/apt_install.sh <why> <apt-get install options and packages...>
# <why> names what is missing, for the error messages.
set -euo pipefail
WHY="$1"
shift
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "$WHY is missing and this is not root: run 'sudo apt-get install $*'" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$WHY is missing and apt-get is not available: install it by hand ($*)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "$@"
