#!/usr/bin/env bash
# Fresh-machine set-up: a local virtual environment with pinned dependencies, then the demo or the tests.
#   bash setup.sh demo   # install (extras dev + demo: matplotlib), then run the main job on built-in defaults
#   bash setup.sh test   # install (extra dev: test tools, ONNX, FastAPI; Debian's chromium for the page test), then
#                        # run the test suite
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-demo}" in
  demo) extras="dev,demo"; then_run=(.venv/bin/adaptformer demo) ;;
  test) extras="dev"; then_run=(.venv/bin/python -m pytest -q); bash scripts/install_browser.sh ;;
  *) echo "usage: bash setup.sh [demo|test]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$extras]"
"${then_run[@]}"
