#!/usr/bin/env bash
# Reproduce the RecJPQ paper's table on ML-1M and Amazon Beauty from the command line alone.
#
#   benchmarks/paper_table.sh DATA_ROOT OUT_DIR BUDGET_S D
#
# DATA_ROOT holds ml-1m/ml-1m.txt and beauty/beauty.txt (as ../shared/data does). For each dataset:
# prepare; assign random, svd and bpr; train every row with --time-limit BUDGET_S and --set d=D (CUDA when
# present); evaluate each model's rows against its dense row, and all rows in one table, with --json;
# compress each JPQ run. Environment:
#   DATASETS  datasets to run (default "ml-1m beauty")
#   ROWS      rows to run (default all: sasrec-dense sasrec-random sasrec-svd sasrec-bpr sasrec-svd-kmeans
#             gsasrec-dense gsasrec-svd bert4rec-dense bert4rec-svd; gru4rec-* rows too on request). MODEL-svd-kmeans rows are RecJPQ-HC: codes
#             and starting centroids from `assign --strategy svd-kmeans --dim D` (assigned only when listed).
#             A row is MODEL[+LOSS]-KIND: `+ce`, `+gbce` or `+bce` trains MODEL with that loss against
#             $NEGATIVES negatives shared by a sequence's positions (`+gbce` with gbce_t 0.75, as gSASRec), e.g.
#             sasrec+ce-svd-kmeans (SASRec, sampled softmax) or bert4rec+gbce-dense (gBERT4Rec). Each
#             MODEL[+LOSS] is its own group: its rows are tested against its own -dense row
#   NEGATIVES negatives of the +LOSS rows (default 256)
#   DROPOUT   dropout of SASRec and gSASRec (default 0.2: what a CPU budget learns best with; the paper: 0.5)
#   EXTRA     more arguments for every `recjpq train` (e.g. "--set val_users=256")
#   EXTRA_<MODEL>  more arguments for that model's rows only (e.g. EXTRA_bert4rec="--set lr=1e-3")
#   GSASREC_NEGATIVES_PER  `sequence` (default) or `position`: how gSASRec's 256 negatives are drawn. Shared by
#             a sequence's positions they cost one batched product (0.60 s a step on ML-1M at ksub 1,024 on
#             2 CPU cores, against 3.3 s per position), and reached 0.1574 test NDCG@10 in 30 minutes
#   DENSE_EXTRA  more arguments for the dense rows only (e.g. "--set tie_embeddings=true": one item table for
#             input and output, as JPQ has; the paper's dense baseline has two)
#   KSUB      centroids per split for every assignment (default: 131072 / D, so that ksub x d, the number of
#             item parameters, equals the paper's 256 x 512 whatever D is; at least 256 and at most half the
#             dataset's items). At D=128 on ML-1M, ksub 1,024 learned well above ksub 256 (docs/results.md).
#   M         sub-ids per item (splits) for every assignment (default 8, the paper's). More splits of fewer
#             dimensions each share less of an item's vector with any other item (docs/results.md, Beauty)
# A row whose run folder already has best.pt is kept (the script can be rerun to finish a table).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 DATA_ROOT OUT_DIR BUDGET_S D" >&2
  exit 2
fi
DATA_ROOT=$1 OUT=$2 BUDGET=$3 D=$4
DATASETS=${DATASETS:-"ml-1m beauty"}
ROWS=${ROWS:-"sasrec-dense sasrec-random sasrec-svd sasrec-bpr sasrec-svd-kmeans gsasrec-dense gsasrec-svd bert4rec-dense
  bert4rec-svd"}
DROPOUT=${DROPOUT:-0.2}
EXTRA=${EXTRA:-}
DENSE_EXTRA=${DENSE_EXTRA:-}
GSASREC_NEGATIVES_PER=${GSASREC_NEGATIVES_PER:-sequence}
M=${M:-8}
NEGATIVES=${NEGATIVES:-256}
mkdir -p "$OUT"

for name in $DATASETS; do
  raw="$DATA_ROOT/$name/$name.txt"
  dir="$OUT/$name"
  ds="$dir/data"
  mkdir -p "$dir/runs" "$dir/models"
  [ -d "$ds" ] || recjpq prepare "$raw" --out "$ds" --json "$dir/prepare.json"
  if [ -n "${KSUB:-}" ]; then ksub=$KSUB; else
    n_items=$(awk '/^n_items:/ {print $2}' "$ds/dataset.yaml")
    ksub=$(( 131072 / D )); (( ksub >= 256 )) || ksub=256; (( ksub <= n_items / 2 )) || ksub=$(( n_items / 2 ))
  fi
  strategies="random svd bpr"
  case " $ROWS " in *-svd-kmeans\ *) strategies+=" svd-kmeans";; esac
  for s in $strategies; do
    dim=(--dim "$D")  # the d the codes are for, every strategy (svd-kmeans: its SVD components)
    [ -f "$dir/codes-$s.npy" ] || recjpq assign "$ds" --strategy "$s" --code-length "$M" --centroids "$ksub" \
      "${dim[@]}" --out "$dir/codes-$s.npy" --json "$dir/assign-$s.json"
  done
  for row in $ROWS; do
    group=${row%%-*} kind=${row#*-}
    model=${group%%+*} loss=${group#"$model"}; loss=${loss#+}
    run="$dir/runs/$row"
    [ -f "$run/best.pt" ] && continue
    # shellcheck disable=SC2206
    if [ "$kind" = dense ]; then emb=(--embedding full $DENSE_EXTRA); else emb=(--codes "$dir/codes-$kind.npy"); fi
    row_opts=(); [ "$model" = bert4rec ] || row_opts=(--set "dropout=$DROPOUT")
    [ "$model" = gsasrec ] && row_opts+=(--set "negatives_per=$GSASREC_NEGATIVES_PER")
    if [ -n "$loss" ]; then
      row_opts+=(--set "loss=$loss" --set "negatives=$NEGATIVES" --set negatives_per=sequence)
      [ "$loss" = gbce ] && row_opts+=(--set gbce_t=0.75)
    fi
    model_extra="EXTRA_$model"
    # shellcheck disable=SC2086
    recjpq train "$ds" "${emb[@]}" --model "$model" --out "$run" --overwrite --time-limit "$BUDGET" \
      --set "d=$D" "${row_opts[@]}" --json "$run.train.json" $EXTRA ${!model_extra:-}
  done
  # One table per MODEL[+LOSS] group, its dense row first (the paired t-tests compare against it), then all rows.
  all=() groups=()
  for row in $ROWS; do
    case " ${groups[*]} " in *" ${row%%-*} "*) ;; *) groups+=("${row%%-*}");; esac
  done
  for group in "${groups[@]}"; do
    runs=()
    for row in $ROWS; do
      [ "${row%%-*}" = "$group" ] || continue
      if [ "${row#*-}" = dense ]; then runs=("$dir/runs/$row" "${runs[@]}"); else runs+=("$dir/runs/$row"); fi
    done
    recjpq evaluate "${runs[@]}" --data "$ds" --json "$dir/eval-$group.json" --overwrite
    all+=("${runs[@]}")
  done
  recjpq evaluate "${all[@]}" --data "$ds" --baseline popularity --json "$dir/eval-all.json" \
    --per-user "$dir/per-user.parquet" --overwrite
  for row in $ROWS; do
    case $row in *-dense) continue;; esac
    recjpq compress "$dir/runs/$row" --data "$ds" --out "$dir/models/$row.safetensors" --overwrite \
      --json "$dir/models/$row.json"
  done
done
echo "paper table written under $OUT"
