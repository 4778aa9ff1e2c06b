#!/usr/bin/env bash
# Debian's packages for the tests that need a program beside Python: chromium for the browser tests
# (tests/end_to_end/test_ui_*.py, test_plots_page.py, which Playwright drives; Playwright's own browser
# download needs the internet, a package mirror is enough for this), postgresql for the team server test
# (tests/end_to_end/test_postgres.py) and qemu-user, whose emulated Intel and AMD processors the cross-CPU test
# runs the pinned runtime on (tests/engine/test_cross_cpu.py). Installs only what is missing; does nothing
# when all three are there.
set -euo pipefail
missing=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CHROMIUM:-}" ]; then
    missing+=(chromium)
fi
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
if ! command -v qemu-x86_64 >/dev/null; then
    missing+=(qemu-user)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_services.sh: no apt-get here; install ${missing[*]} yourself (CHROMIUM=/path/to/chromium" \
         "for a browser elsewhere), or leave those tests out with: python -m pytest -m 'not slow and not pipeline'" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
echo "install_services.sh: installing Debian's ${missing[*]} (about a minute)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
