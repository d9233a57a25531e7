#!/usr/bin/env bash
# Install recjpq and run the whole pipeline on sample_data/ (the first Quickstart command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OUT=${1:-out/quickstart}
mkdir -p "$OUT"
recjpq prepare sample_data/interactions.csv --out "$OUT/dataset" --overwrite
recjpq assign "$OUT/dataset" --strategy svd --dim 64 --out "$OUT/codes.npy" --overwrite  # d of configs/cpu-small.yaml
recjpq train "$OUT/dataset" --codes "$OUT/codes.npy" --config configs/cpu-small.yaml --out "$OUT/run" \
  --max-steps 200 --overwrite
recjpq evaluate "$OUT/run" --data "$OUT/dataset" --baseline popularity --json "$OUT/metrics.json"
recjpq compress "$OUT/run" --data "$OUT/dataset" --out "$OUT/model.safetensors" --overwrite
recjpq recommend "$OUT/model.safetensors" --data "$OUT/dataset" --k 10 --out "$OUT/recs.parquet" --overwrite
echo "Quickstart finished: results in $OUT"
