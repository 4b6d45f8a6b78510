#!/usr/bin/env bash
# Post-training compression with a short distillation fine-tune (issue 13's evidence): every
# pretrained network of pretrain.sh through `momos compress` at s=4 and s=8 across capacities,
# one epoch of fine-tuning of the motif table (--tune motifs), two runs side by side, one
# thread each. Runs land in runs/pretrained/compress/<model>-s<S>-c<C>; a complete one is
# skipped, an interrupted one continues at its first unfinished stage. Data from $MOMOS_DATA.
# Then: python experiments/pretrained/compress_report.py
set -euo pipefail
OUT=runs/pretrained/compress
mkdir -p "$OUT"

points() {
  for c in 0.001 0.003 0.01; do echo "mlp-fashion-mnist 4 $c"; done
  for c in 0.003 0.01 0.03; do echo "mlp-fashion-mnist 8 $c"; done
  echo "resnet20-cifar10 4 0.01"; echo "vit-fashion-mnist 4 0.01"
  echo "resnet20-cifar10 8 0.03"; echo "vit-fashion-mnist 8 0.03"
  echo "resnet20-cifar10 4 0.003"; echo "resnet20-cifar10 8 0.01"
}

one() {
  local model=$1 s=$2 c=$3 out="$OUT/$1-s$2-c$3"
  if [ -f "$out/results.json" ] && grep -q '"complete": true' "$out/results.json"; then return 0; fi
  momos compress "runs/pretrained/$model" -o "$out" --block-size "$s" --capacity "$c" --normalize channel \
    --motifs kmeans --parameters matrices --calibration 256 --epochs 1 --tune motifs --lr 1e-3 \
    --threads 1 > "$out.log" 2>&1 || echo "failed: $out (see $out.log)"
}
export -f one
export OUT
points | xargs -P 2 -L 1 bash -c 'one "$@"' _
