#!/usr/bin/env bash
# Fresh-machine set-up: a local virtual environment with pinned dependencies, then the demo or the tests.
#   bash setup.sh demo   # install the package, then run the main job on built-in defaults
#   bash setup.sh test   # install (extra dev: test tools, ONNX, FastAPI; Debian's chromium for the page test), then
#                        # run the test suite in parallel (pytest-xdist, one worker per core, idle workers steal)
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-demo}" in
  demo) target="."; then_run=(.venv/bin/adaptformer demo) ;;
  test) target=".[dev]"; then_run=(.venv/bin/python -m pytest -q -n auto --dist worksteal --durations=20); bash scripts/install_browser.sh ;;
  *) echo "usage: bash setup.sh [demo|test]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e "$target"
"${then_run[@]}"
