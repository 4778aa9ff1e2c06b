#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/end_to_end/test_ui_*.py, test_plots_page.py), which Playwright
# drives (Playwright's own browser download needs the internet; a package mirror is enough for this).
# Does nothing when a Chromium is already there.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "${CHROMIUM:-}" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: no apt-get here; install Chromium yourself and set CHROMIUM=/path/to/it," \
         "or leave the browser tests out with: python -m pytest -m 'not slow'" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
echo "install_browser.sh: installing Debian's chromium (about a minute)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
