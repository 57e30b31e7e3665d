#!/usr/bin/env bash
# Fresh-machine set-up: a local virtual environment with pinned dependencies, then the demo or the tests.
#   bash setup.sh demo   # install, then run the main job on built-in defaults
#   bash setup.sh test   # install, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
case "${1:-demo}" in
  demo) .venv/bin/adaptformer demo ;;
  test) .venv/bin/python -m pytest -q ;;
  *) echo "usage: bash setup.sh [demo|test]" >&2; exit 2 ;;
esac
