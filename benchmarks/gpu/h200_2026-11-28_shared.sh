#!/bin/bash
# One GPU lease: the robustness suite at full Fashion-MNIST size (issue 11), digits VGG19-BN's
# settings, and the CUDA unit test. Rows go to /tmp/rows, tarred into $OUT every 20 s.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p /tmp/rows /tmp/logs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))"
# fail fast: one tiny variant through the whole CUDA path
timeout 120 python3 -m benchmarks.robustness_suite --params params/offline.yaml --seed 1 --n 20 --only 1 \
  --overrides '{"attack_train.epochs": 2, "defense.train.epochs": 2}' --cache /tmp/smoke --device cuda \
  --out /tmp/rows/smoke.jsonl || { echo SMOKE FAILED; exit 3; }
timeout 100 python3 -m pytest -q -x tests/test_attacks_lf_trojan.py -k cuda -p no:cacheprovider > /tmp/logs/pytest_cuda.txt 2>&1 &
DEADLINE=${DEADLINE:-470}
S=benchmarks.robustness_suite
P0='{}'
PPAPER='{"train.epochs": 100, "train.batch_size": 256}'
P003='{"train.lr": 0.03, "train.schedule": "constant"}'
fm() {  # Fashion full, PreAct-ResNet18 width 64: worker $1 runs variants $2
  timeout $DEADLINE python3 -m $S --params params/fashion_mnist.yaml --seed 1 --n 20 --only $2 --device cuda \
    --overrides '{"model.width": 64}' --cache /tmp/runs \
    --defense-overrides "$P0" --out /tmp/rows/fm_preact64_params.jsonl \
    --defense-overrides "$PPAPER" --out /tmp/rows/fm_preact64_paper.jsonl \
    --defense-overrides "$P003" --out /tmp/rows/fm_preact64_lr003.jsonl > /tmp/logs/fm_$1.txt 2>&1
}
dv() {  # digits (offline default) VGG19-BN: worker $1 runs variants $2
  timeout $DEADLINE python3 -m $S --params params/offline.yaml --seed 1 --n 20 --only $2 --device cuda \
    --overrides '{"model.name": "vgg19_bn"}' --cache /tmp/runs \
    --defense-overrides '{"train.lr": 0.01, "ft_sam.rho": 6.0}' --out /tmp/rows/dv_lr001_rho6.jsonl \
    --defense-overrides '{"train.lr": 0.01, "ft_sam.rho": 2.0, "train.epochs": 120}' --out /tmp/rows/dv_lr001_rho2_e120.jsonl \
    --defense-overrides '{"train.lr": 0.01, "ft_sam.rho": 6.0, "train.epochs": 120}' --out /tmp/rows/dv_lr001_rho6_e120.jsonl \
    --defense-overrides '{"train.lr": 0.02, "ft_sam.rho": 2.0}' --out /tmp/rows/dv_lr002_rho2.jsonl > /tmp/logs/dv_$1.txt 2>&1
}
fv() {  # Fashion full, VGG19-BN width 64, the paper's rho 6 for VGG19-BN
  timeout $DEADLINE python3 -m $S --params params/fashion_mnist.yaml --seed 1 --n 20 --only $1 --device cuda \
    --overrides '{"model.name": "vgg19_bn", "model.width": 64}' --cache /tmp/runs \
    --defense-overrides '{"ft_sam.rho": 6.0}' --out /tmp/rows/fm_vgg64_params_rho6.jsonl \
    --defense-overrides '{"ft_sam.rho": 6.0, "train.epochs": 100, "train.batch_size": 256}' --out /tmp/rows/fm_vgg64_paper_rho6.jsonl > /tmp/logs/fv.txt 2>&1
}
fc() {  # Fashion full, the small CNN without BatchNorm (params file width 32)
  timeout $DEADLINE python3 -m $S --params params/fashion_mnist.yaml --seed 1 --n 20 --only $1 --device cuda \
    --overrides '{"model.name": "simple_cnn"}' --cache /tmp/runs \
    --defense-overrides "$P0" --out /tmp/rows/fm_cnn_params.jsonl \
    --defense-overrides "$PPAPER" --out /tmp/rows/fm_cnn_paper.jsonl > /tmp/logs/fc.txt 2>&1
}
fm 0 0,4,8,12,16 & fm 1 1,5,9,13,17 & fm 2 2,6,10,14,18 & fm 3 3,7,11,15,19 &
dv 0 0,2,13,3,5,7,9,11,15,17,19 & dv 1 1,12,4,6,8,10,14,16,18 &
fv 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19 &
fc 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19 &
snap() { tar -C /tmp -cf $OUT/rows.tar.tmp rows logs && mv $OUT/rows.tar.tmp $OUT/rows.tar; }
( while true; do sleep 20; snap; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> /tmp/logs/gpu_util.txt; done ) &
SNAP=$!
wait $(jobs -p | grep -v "^$SNAP$") 2>/dev/null
kill $SNAP; snap
tail -n 3 /tmp/logs/*.txt
wc -l /tmp/rows/*.jsonl
