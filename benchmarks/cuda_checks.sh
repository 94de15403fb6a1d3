#!/usr/bin/env bash
# Everything fedbench checks on a CUDA GPU, in order of importance, each step bounded in time:
#   1. the memory model against torch.cuda.max_memory_allocated (every workload of five methods,
#      five models, batches 16 and 64; SGD's foreach and per-tensor paths) -> OUT/memory_cuda.{md,json}
#   1b. the same with CUDNN_CONV_WSCAP_DBG=0 (no effect with torch 2.11 + cuDNN 9.19: not a default step)
#                                                            -> OUT/memory_cuda_ws0.{md,json}
#   1c. for the 4 rows CUDA exceeds most: what is live at the peak and where it was allocated
#      (torch's allocator history with C++ frames)          -> OUT/memory_explain.md
#   2. one 2-round --device cuda run of every registered method on synthetic data -> OUT/smoke.jsonl
#   3. the width/depth baselines at full width, ResNet18 on Fashion-MNIST, 30 rounds -> OUT/grid.jsonl
# Usage: benchmarks/cuda_checks.sh OUT_DIR [FASHION_MNIST_DIR] [GRID_SECONDS]
# STEPS="1 1c 2 3" (the default; 1b on request) picks steps; GRID_METHODS the methods of step 3.
# Needs only torch, torchvision, numpy, pandas, pyyaml, typer, rich (no MLflow): runs go through
# benchmarks/accuracy_grid.py. Install fedbench first (pip install --no-deps -e .) for its entry points.
set -u
OUT=${1:?usage: cuda_checks.sh OUT_DIR [FASHION_MNIST_DIR] [GRID_SECONDS]}
FMNIST=${2:-}
GRID_SECONDS=${3:-300}
GRID_METHODS=${GRID_METHODS:-fedavg,allsmall,heterofl,fedrolex,depthfl,progfed}
PY=${PYTHON:-python3}
STEPS=" ${STEPS:-1 1c 2 3} "
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true

{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"; nproc; } >"$OUT/env.txt" 2>&1

if [[ $STEPS == *" 1 "* ]]; then
  echo "== 1. memory model vs CUDA allocator"
  timeout 300 $PY benchmarks/bench_memory_cuda.py --per-tensor --json "$OUT/memory_cuda.json" >"$OUT/memory_cuda.md" 2>&1
  tail -n 1 "$OUT/memory_cuda.md"
fi
if [[ $STEPS == *" 1b "* ]]; then
  echo "== 1b. memory model vs CUDA allocator, cuDNN workspace capped at 0"
  CUDNN_CONV_WSCAP_DBG=0 timeout 150 $PY benchmarks/bench_memory_cuda.py --json "$OUT/memory_cuda_ws0.json" \
    >"$OUT/memory_cuda_ws0.md" 2>&1
  tail -n 1 "$OUT/memory_cuda_ws0.md"
fi
if [[ $STEPS == *" 1c "* ]]; then
  echo "== 1c. what CUDA holds beyond the memory model, for the 4 largest excesses"
  timeout 240 $PY benchmarks/bench_memory_cuda.py --models resnet18,cnn --explain 4 >"$OUT/memory_explain.md" 2>&1
  grep "^###" "$OUT/memory_explain.md"
fi
if [[ $STEPS == *" 2 "* ]]; then
  echo "== 2. every method, 2 rounds on --device cuda"
  timeout 60 $PY benchmarks/accuracy_grid.py \
    --methods "$($PY -c 'from fedbench import registry; print(",".join(p.name for p in registry.available("methods")))')" \
    --set data.dataset=synthetic --set data.num_clients=8 --set clients_per_round=4 --set rounds=2 \
    --set device=cuda --set tracking.enabled=false --out "$OUT/smoke.jsonl"
fi

if [[ $STEPS == *" 3 "* ]] && [ -n "$FMNIST" ] && [ "$GRID_SECONDS" -gt 0 ]; then
  echo "== 3. full-width ResNet18 baselines on Fashion-MNIST (stops after ${GRID_SECONDS}s)"
  timeout "$GRID_SECONDS" $PY benchmarks/accuracy_grid.py \
    --methods "$GRID_METHODS" \
    --set data.dataset=fashion-mnist --set "data.data_dir=$FMNIST" --set model.name=resnet18 \
    --set model.width=1.0 --set fleet.profile=relative --set data.partition=dirichlet --set data.alpha=0.5 \
    --set data.num_clients=100 --set rounds=30 --set train.local_epochs=1 --set eval_every=5 --set seed=42 \
    --set threads=8 --set device=cuda --set tracking.enabled=false --out "$OUT/grid.jsonl"
fi
