#!/usr/bin/env bash
# Install what the tests need, then run them (the second Quickstart command; .ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
PY=${PYTHON:-python3}
"$PY" -m ruff check recjpq_cli tests benchmarks
"$PY" -m pytest -p no:cacheprovider "$@"
