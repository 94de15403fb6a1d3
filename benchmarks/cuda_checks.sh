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
#   4. the GPU path: round times of the transfer path, the resident path and 2/4 trainers per GPU,
#      a plain PyTorch loop's images/s, one profiled round per serial path -> OUT/gpu_path.{md,json},
#      OUT/profile_*.txt
#   5. DepthFL's round against FedAvg's on the resident path           -> OUT/depthfl_ratio.{md,json}
#   6. the long-horizon comparison (full-width ResNet18, 5 local epochs), stopped in time with its
#      checkpoints under CKPT_DIR, continued by the next invocation     -> OUT/long.jsonl
# Usage: benchmarks/cuda_checks.sh OUT_DIR [FASHION_MNIST_DIR] [GRID_SECONDS]
# STEPS="1 1c 2 3" (the default; 1b, 4, 5, 6 on request) picks steps; GRID_METHODS the methods of
# step 3; LONG_METHODS, LONG_ROUNDS, LONG_SECONDS, LONG_WORKERS and CKPT_DIR those of step 6.
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

if [[ $STEPS == *" 4 "* ]]; then
  echo "== 4. GPU path: transfer vs resident vs K trainers per GPU, plain loop, profiles"
  timeout 420 $PY benchmarks/bench_gpu_path.py ${FMNIST:+--data-dir "$FMNIST"} \
    --paths plain,transfer:6,resident:22,workers2:8,workers4:22 --profile --out "$OUT" 2>&1 | tail -n 12
fi
if [[ $STEPS == *" 5 "* ]]; then
  echo "== 5. DepthFL round vs FedAvg round, resident path"
  mkdir -p "$OUT/depthfl"
  timeout 240 $PY benchmarks/bench_gpu_path.py ${FMNIST:+--data-dir "$FMNIST"} --paths resident:8 \
    --methods fedavg,depthfl --out "$OUT/depthfl" 2>&1 | tail -n 4
  cp "$OUT/depthfl/gpu_path.md" "$OUT/depthfl_ratio.md"; cp "$OUT/depthfl/gpu_path.json" "$OUT/depthfl_ratio.json"
  rm -r "$OUT/depthfl"
fi
if [[ $STEPS == *" 6 "* ]] && [ -n "$FMNIST" ]; then
  LONG_SECONDS=${LONG_SECONDS:-480}
  CKPT_DIR=${CKPT_DIR:-gpu-checkpoints}
  echo "== 6. long horizon: ${LONG_METHODS:-neulite,fedavg,exclusivefl,allsmall}, stops after ${LONG_SECONDS}s, checkpoints in $CKPT_DIR"
  timeout $((LONG_SECONDS + 120)) $PY benchmarks/accuracy_grid.py --methods "${LONG_METHODS:-neulite,fedavg,exclusivefl,allsmall}" \
    --set data.dataset=fashion-mnist --set "data.data_dir=$FMNIST" --set model.name=resnet18 --set model.width=1.0 \
    --set data.partition=dirichlet --set data.alpha=0.5 --set data.num_clients=100 --set fleet.profile=paper \
    --set rounds="${LONG_ROUNDS:-400}" --set train.local_epochs=5 --set eval_every=20 --set seed=42 --set threads=8 \
    --set device=cuda --set executor=process --set workers="${LONG_WORKERS:-4}" --set tracking.enabled=false \
    --checkpoint-dir "$CKPT_DIR" --stop-after "$LONG_SECONDS" --out "$OUT/long.jsonl"
  ls -l "$CKPT_DIR"
  # The trip back: files of at most 16 MiB come back, so each checkpoint returns in 15 MiB parts;
  # `cat NAME.ckpt.part-* > gpu-checkpoints/NAME.ckpt` here puts it together for the next visit.
  for c in "$CKPT_DIR"/*.ckpt; do [ -f "$c" ] && split -b 15M -d "$c" "$OUT/$(basename "$c").part-"; done
fi
