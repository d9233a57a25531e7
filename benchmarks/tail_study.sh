#!/usr/bin/env bash
# Issue 19's tail-item study on Amazon Beauty: svd-kmeans codes as `assign` makes them against tail items
# placed by their users' profiles (benchmarks/tail_codes.py); SASRec-JPQ d=128, ksub 8,192, 900 s each,
# then `evaluate` (long-tail breakdown, paired t-test). About 40 minutes on 2 cores.
#   bash benchmarks/tail_study.sh /tmp/tail [BEAUTY_FILE]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:?usage: tail_study.sh WORK_DIR [BEAUTY_FILE]}
BEAUTY=${2:-$HERE/../../shared/data/beauty/beauty.txt}
mkdir -p "$WORK" && cd "$WORK"
[ -d data ] || recjpq prepare "$BEAUTY" --out data -q --json prepare.json
[ -f km.npy ] || recjpq assign data --dim 128 -b 8192 --out km.npy --json km.json -q
[ -f tail.npy ] || python3 "$HERE/tail_codes.py" data tail.npy --dim 128 -b 8192 --json tail.json -q 2> tail.log
for c in km tail; do
  [ -f runs/$c/best.pt ] || recjpq train data --codes $c.npy --out runs/$c --overwrite --time-limit 900 --set d=128 \
    --set dropout=0.2 --set max_len=50 --set val_users=4096 -q --json runs/$c.train.json
done
recjpq evaluate runs/km runs/tail --data data --json eval.json --overwrite -q
