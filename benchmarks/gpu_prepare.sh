#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) on the CPU side for benchmarks/gpu_check.sh on a GPU machine without network:
#   .gpu/wheels/  polars (and its runtime package polars-runtime-*), pytest and hypothesis with their pure
#                 Python dependencies, as wheels for CPython 3.12 on manylinux x86_64 (the GPU image)
#   .gpu/ml-1m.txt.gz  ML1M_TXT gzipped (default ../shared/data/ml-1m/ml-1m.txt, else /work/shared/data/...):
#                 gzipped (2.5 MB, not 9 MB) because what a `run` carries is limited to 64 MiB in all and the
#                 polars runtime wheel alone is 54 MB
#
#   benchmarks/gpu_prepare.sh [ML1M_TXT]
#
# Then carry ".gpu" with the working tree to the GPU machine (see docs/benchmarks.md, "GPU check").
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST="$REPO/.gpu"
ML1M=${1:-}
if [ -z "$ML1M" ]; then
  for c in "$REPO/../shared/data/ml-1m/ml-1m.txt" /work/shared/data/ml-1m/ml-1m.txt; do
    [ -f "$c" ] && { ML1M=$c; break; }
  done
fi
mkdir -p "$DEST/wheels"
PY=${PYTHON:-python3}
TARGET=(--python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d "$DEST/wheels")
# polars itself is pure Python; its compiled engine is the runtime package it requires (polars-runtime-32).
"$PY" -m pip download polars --no-deps "${TARGET[@]}"
runtime=$("$PY" - "$DEST/wheels" <<'PY'
import sys, zipfile, pathlib, re
whl = sorted(pathlib.Path(sys.argv[1]).glob("polars-[0-9]*.whl"))[-1]
meta = next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith(".dist-info/METADATA"))
for line in zipfile.ZipFile(whl).read(meta).decode().splitlines():
    m = re.match(r"Requires-Dist: (polars-runtime-[0-9]+)\s*(\(?[=<>!~][^;]*\)?)?\s*$", line)
    if m:  # the unconditional runtime requirement (extras are marked with `; extra ==`)
        print(m.group(1) + (m.group(2) or "").strip("() "))
PY
)
[ -n "$runtime" ] && "$PY" -m pip download "$runtime" --no-deps "${TARGET[@]}"
# The test runner for `pytest -m cuda` (not in the GPU image), with its dependencies.
"$PY" -m pip download pytest hypothesis "${TARGET[@]}"
if [ -n "$ML1M" ] && [ -f "$ML1M" ]; then
  gzip -9 -c "$ML1M" >"$DEST/ml-1m.txt.gz"
  rm -f "$DEST/ml-1m.txt"
else
  echo "warning: no ml-1m.txt found (pass its path): the GPU check's ML-1M part will run on sample_data" >&2
fi
ls -l "$DEST" "$DEST/wheels"
du -sh "$DEST"
