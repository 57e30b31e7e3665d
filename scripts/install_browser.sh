#!/usr/bin/env bash
# The Debian packages the test extra needs beside Python's: Chromium and ChromeDriver for the page tests of
# `adaptformer serve` (driven headless with Selenium), and libGL and GLib, which OpenCV (opencv-python, required by
# imagecorruptions-imaug for `adaptformer robustness`) loads. Does nothing when all are installed; needs root (or sudo)
# otherwise.
set -euo pipefail
have_lib() { ldconfig -p | grep -q "$1"; }
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && have_lib libGL.so.1 && have_lib libglib-2.0.so.0; then
  exit 0
fi
run=()
[ "$(id -u)" -eq 0 ] || run=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -q
"${run[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver libgl1 libglib2.0-0
