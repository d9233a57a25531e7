#!/usr/bin/env bash
# The GPU check (issue 20): one command, under 5 minutes on one H200, that proves the GPU path.
#
#   benchmarks/gpu_check.sh [--smoke] OUT_DIR
#
# Writes OUT_DIR/report.json and OUT_DIR/report.md ({"device", "torch", "parts": [{"name", "status",
# "seconds", ...figures}], "goals": [...]}) from four parts (benchmarks/gpu_parts.py), each in its own
# process under `timeout`, so that a failed or stuck part does not stop the others: pytest (`pytest -m cuda`),
# ml1m (gSASRec-JPQ d=512 on .gpu/ml-1m.txt.gz, about 150 s of training, then evaluate), scale (RecJPQ vs dense
# step time and GPU memory at 10k, 1M, 10M items) and ranking (whole-catalogue top-10, GPU torch path vs CPU
# PQTopK, 1M items). The GPU machine has no network: polars and pytest come from the wheels in .gpu/wheels
# (benchmarks/gpu_prepare.sh fills .gpu/ on the CPU side; carry ".gpu"), installed with `pip install
# --no-index` only when not importable. --smoke runs every part on the CPU with tiny sizes (under a minute;
# tests/test_gpu_check.py). Exit 0 when every part is ok; goals are reported as met or missed, not in the
# exit code.
set -uo pipefail
SMOKE=()
if [ "${1:-}" = --smoke ]; then SMOKE=(--smoke); shift; fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--smoke] OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
# Offline installs go to a folder of their own (no write into the image's site-packages; kept for a rerun).
SITE=${GPU_SITE:-/tmp/recjpq-gpu-site}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
rm -rf "$OUT/parts" "$OUT/logs" "$OUT/work" "$OUT/report.json" "$OUT/report.md"
mkdir -p "$OUT/parts" "$OUT/logs"

# Offline installs, only for what is missing (never when it is already importable).
for pkg in polars pytest; do
  if ! "$PY" -c "import $pkg" 2>/dev/null; then
    extra=(); [ "$pkg" = pytest ] && extra=(hypothesis)
    echo "installing $pkg from .gpu/wheels (offline)" >&2
    "$PY" -m pip install --no-index --find-links "$REPO/.gpu/wheels" --target "$SITE" "$pkg" "${extra[@]}" \
      >>"$OUT/logs/pip.log" 2>&1 || echo "pip could not install $pkg: see $OUT/logs/pip.log" >&2
  fi
done

# Time boxes (seconds) per part; the real ones add up to under 5 minutes with the installs and the report.
if [ ${#SMOKE[@]} -gt 0 ]; then
  BOX=(pytest:60 ml1m:60 scale:60 ranking:60)
else
  BOX=(pytest:40 ml1m:190 scale:35 ranking:30)
fi
for entry in "${BOX[@]}"; do
  part=${entry%%:*} box=${entry#*:}
  echo "== $part (at most $box s)" >&2
  timeout --kill-after=5 "$box" "$PY" benchmarks/gpu_parts.py part "$part" "$OUT" "${SMOKE[@]}" \
    >"$OUT/logs/$part.out" 2>&1
  rc=$?
  [ $rc -eq 0 ] || echo "   $part: exit $rc (124/137: timed out; see $OUT/logs/$part.out)" >&2
done
"$PY" benchmarks/gpu_parts.py report "$OUT" "${SMOKE[@]}"
