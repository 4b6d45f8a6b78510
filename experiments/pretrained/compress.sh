#!/usr/bin/env bash
# Post-training compression with a short distillation fine-tune (issue 13's evidence): every
# pretrained network of pretrain.sh through `momos compress` at s=4 and s=8 across capacities,
# one epoch of fine-tuning of the motif table (--tune motifs), two runs side by side, one
# thread each. Runs land in runs/pretrained/compress/<model>-s<S>-c<C>[-<variant>]; a complete
# one is skipped, an interrupted one continues at its first unfinished stage. Data from
# $MOMOS_DATA. Then: python experiments/pretrained/compress_report.py
set -euo pipefail
OUT=runs/pretrained/compress
mkdir -p "$OUT"

# model s capacity [variant: lr3e-3 = AdamW lr 3e-3, bs32 = batch 32; default lr 1e-3, batch 64]
points() {
  for c in 0.001 0.003 0.01; do echo "mlp-fashion-mnist 4 $c"; done
  for c in 0.003 0.01 0.03; do echo "mlp-fashion-mnist 8 $c"; done
  echo "resnet20-cifar10 4 0.01"; echo "vit-fashion-mnist 4 0.01"
  echo "resnet20-cifar10 8 0.03"; echo "vit-fashion-mnist 8 0.03"
  echo "resnet20-cifar10 4 0.003"; echo "resnet20-cifar10 8 0.01"
  # the learning rate and batch size, tried after the first pass
  echo "resnet20-cifar10 4 0.01 lr3e-3"; echo "resnet20-cifar10 4 0.01 bs32"
  for c in 0.001 0.003 0.01; do echo "mlp-fashion-mnist 4 $c lr3e-3"; done
  for c in 0.003 0.01 0.03; do echo "mlp-fashion-mnist 8 $c lr3e-3"; done
  echo "vit-fashion-mnist 4 0.01 lr3e-3"
}

one() {
  local model=$1 s=$2 c=$3 variant=${4:-} lr=1e-3 batch=64
  local out="$OUT/$model-s$s-c$c${variant:+-$variant}"
  case "$variant" in lr3e-3) lr=3e-3 ;; bs32) batch=32 ;; esac
  if [ -f "$out/results.json" ] && grep -q '"complete": true' "$out/results.json"; then return 0; fi
  momos compress "runs/pretrained/$model" -o "$out" --block-size "$s" --capacity "$c" --normalize channel \
    --motif-method kmeans --parameters matrices --calibration 256 --epochs 1 --tune motifs --lr "$lr" \
    --batch-size "$batch" --threads 1 > "$out.log" 2>&1 || echo "failed: $out (see $out.log)"
}
export -f one
export OUT
points | xargs -P 2 -L 1 bash -c 'one "$@"' _
