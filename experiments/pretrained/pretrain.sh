#!/usr/bin/env bash
# The three pretrained networks of experiments/PRETRAINED.md: plain training, no MoMos (method
# baseline), one thread each. Data from $MOMOS_DATA (fashion-mnist/, cifar10-jpeg/).
# On the 2-core machine of the report the ViT and the ResNet ran side by side, sharing the cores with
# other work: 3,031 s and 3,759 s of wall time (the MLP: 37 s).
set -euo pipefail
momos train --method baseline --model mlp --dataset fashion-mnist --epochs 10 --val-fraction 0.02 --threads 1 --out runs/pretrained/mlp-fashion-mnist
momos train --method baseline --model vit --dataset fashion-mnist --epochs 5 --val-fraction 0.02 --threads 1 --out runs/pretrained/vit-fashion-mnist
momos train --method baseline --model resnet20 --dataset cifar10 --epochs 6 --val-fraction 0.02 --threads 1 --out runs/pretrained/resnet20-cifar10
# resnet20-cifar10-full: the baseline of the full-data ResNet-20 sweep (60 epochs; experiments/README.md),
# whose BatchNorm statistics make_report.py re-estimates after every projection or rounding
sweep_baseline=runs/sweeps/reproduction-resnet20-cifar10-full/runs/method-baseline__seed-0
mkdir -p runs/pretrained/resnet20-cifar10-full
cp "$sweep_baseline"/results.json "$sweep_baseline"/final.safetensors runs/pretrained/resnet20-cifar10-full/
