#!/bin/bash
# GPU timing, one process alone: Fashion-MNIST full size, epochs 1 vs 3 (the difference / 2 is one epoch).
export PYTHONUNBUFFERED=1
S="python3 -m benchmarks.robustness_suite --params params/fashion_mnist.yaml --seed 1 --n 20 --only 1 --device cuda --cache /tmp/runs"
t() {  # $1 name, $2 model overrides, $3 epochs
  timeout 70 $S --overrides "{$2, \"attack_train.epochs\": $3, \"defense.train.epochs\": $3}" --out $OUT/$1_e$3.jsonl | tail -n 1
}
t preact64 '"model.width": 64' 1
t preact64 '"model.width": 64' 3
t preact32 '"model.width": 32' 1
t preact32 '"model.width": 32' 3
t vgg64 '"model.name": "vgg19_bn", "model.width": 64' 1
