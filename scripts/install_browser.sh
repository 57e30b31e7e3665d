#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the page test of `adaptformer serve` (tests/inference/test_serve.py drives the page
# headless with Selenium). Does nothing when both are installed; needs root (or sudo) otherwise.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
run=()
[ "$(id -u)" -eq 0 ] || run=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -q
"${run[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
