#!/usr/bin/env bash
# Install recjpq (and, with "test", what the tests need: the test tools and the `serve` extra, so the
# server tests run in CI). A CPU build of torch is installed first when
# no torch is present, so pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "test" ]; then
  "$PY" -m pip install -q -e ".[test,serve]"
else
  "$PY" -m pip install -q -e .
fi
