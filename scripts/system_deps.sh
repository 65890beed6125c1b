#!/usr/bin/env bash
# System packages the test suite drives: Debian's chromium for the browser test
# of the trigger forms. Installs what is missing when apt-get can; otherwise the
# browser test skips and says why.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: no apt-get here; install chromium for the browser test"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo="sudo -n" || { echo "system_deps: not root; install chromium for the browser test"; exit 0; }
fi
echo "system_deps: installing chromium"
$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
    || echo "system_deps: could not install chromium; the browser test will skip"
