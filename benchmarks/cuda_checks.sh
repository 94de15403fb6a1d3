#!/usr/bin/env bash
# Everything fedbench checks on a CUDA GPU, in order of importance, each step bounded in time:
#   1. the memory model against torch.cuda.max_memory_allocated (every workload of five methods,
#      five models, batches 16 and 64; SGD's foreach and per-tensor paths) -> OUT/memory_cuda.{md,json}
#   1b. the same with CUDNN_CONV_WSCAP_DBG=0 (no effect with torch 2.11 + cuDNN 9.19: not a default step)
#                                                            -> OUT/memory_cuda_ws0.{md,json}
#   1c. for the 4 rows CUDA exceeds most: what is live at the peak and where it was allocated
#      (torch's allocator history with C++ frames)          -> OUT/memory_explain.md
#   2. one 3-round, 3-epoch --device cuda run of every registered method on synthetic data
#                                                                       -> OUT/smoke.jsonl
#  2g. the same runs with CUDA graphs, set against step 2's            -> OUT/smoke_graphs.{jsonl,md}
#   3. the width/depth baselines at full width, ResNet18 on Fashion-MNIST, 30 rounds -> OUT/grid.jsonl
#   4. the GPU path: round times of the transfer path, the resident path, CUDA graphs and 4 trainer
#      threads per GPU, plain PyTorch loops' images/s, one profiled round per serial path
#                                                   -> OUT/gpu_path.{md,json}, OUT/profile_*.txt
#   5. DepthFL's step and evaluation forward against FedAvg's in both layouts (OUT/depthfl_steps.md);
#      its round against FedAvg's, graphed, in both layouts by one trainer and by 4 trainer threads,
#      with where DepthFL's graphed round and its evaluation forward spend their GPU time
#                                         -> OUT/depthfl_ratio.{md,json}, OUT/profile_depthfl_*.txt
#   6. the long-horizon comparison (full-width ResNet18, 5 local epochs), stopped in time with its
#      checkpoints under CKPT_DIR, continued by the next invocation     -> OUT/long.jsonl
#      and its checkpoints cut into parts, as many as one call may bring back -> OUT/*.ckpt.part-KK-of-NN
#  6b. the parts step 6 could not send back yet, from CKPT_DIR/outbox    -> OUT/*.ckpt.part-KK-of-NN
# Usage: benchmarks/cuda_checks.sh OUT_DIR [FASHION_MNIST_DIR] [GRID_SECONDS]
# STEPS="2 2g 4" ends within 8 minutes (its steps' time limits: 60 + 60 + 330 s), STEPS="5 6" within
# LONG_SECONDS + 600 s. STEPS="1 1c 2 3" (the default; 1b, 2g, 4, 5, 6 on request) picks steps; GRID_METHODS the methods of
# step 3; PATHS_4 the paths of step 4 (bench_gpu_path.py --paths); LONG_METHODS, LONG_ROUNDS,
# LONG_SECONDS, LONG_WORKERS (1: serial; K > 1: K trainers of LONG_EXECUTOR, process or streams),
# LONG_GRAPHS (true on a GPU: CUDA graphs), LONG_CHANNELS_LAST (true on a GPU) and CKPT_DIR those of step 6; PART_SIZE (15M), TRAVEL_MIB (60) and MAX_FILES (8) the trip back;
# SMOKE_SECONDS (60) bounds steps 2 and 2g. OUT/env.txt names the GPU, torch and the fedbench code
# (its commit; a digest of its files where the tree is a copy without git, FEDBENCH_CODE_VERSION to name it).
# Needs only torch, torchvision, numpy, pandas, pyyaml, typer, rich (no MLflow, no network): runs go
# through benchmarks/accuracy_grid.py. Installs this checkout (pip install --no-deps
# --no-build-isolation -e .) if the Python it runs does not import fedbench from here.
# DEVICE=cpu rehearses steps 2-6 at toy size on the CPU (a small CNN, 1 local epoch, a few rounds,
# a few seconds per step), so a GPU visit is not spent finding a broken command
# (tests/test_cuda_checks.py runs it).
set -u
OUT=${1:?usage: cuda_checks.sh OUT_DIR [FASHION_MNIST_DIR] [GRID_SECONDS]}
FMNIST=${2:-}
GRID_SECONDS=${3:-300}
GRID_METHODS=${GRID_METHODS:-fedavg,allsmall,heterofl,fedrolex,depthfl,progfed}
PY=${PYTHON:-python3}
STEPS=" ${STEPS:-1 1c 2 3} "
DEVICE=${DEVICE:-cuda}
SMOKE_SECONDS=${SMOKE_SECONDS:-60}  # bound of each of steps 2 and 2g (a loaded CPU rehearsal needs more)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Asked from outside the checkout: from its root, Python imports fedbench from the folder itself, but
# the benchmark scripts (run from benchmarks/) and the entry points need it installed.
if ! (cd / && $PY -c "import fedbench, pathlib, sys; sys.exit(pathlib.Path(fedbench.__file__).parent != pathlib.Path('$ROOT/fedbench'))") 2>/dev/null; then
  echo "== installing $ROOT (entry points: methods, models, data sets)"
  $PY -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" \
    || { echo "cuda_checks.sh: could not install fedbench; run: $PY -m pip install --no-deps --no-build-isolation -e $ROOT"; exit 1; }
fi

# The workload of steps 3-6: the figures' own, or a toy one that runs in seconds on a CPU.
if [ "$DEVICE" = cpu ]; then
  SMOKE_RUN=(--set rounds=2)
  MODEL=(--set model.name=cnn) BENCH=(--device cpu --model cnn --epochs 1 --threads 2 --plain-steps 40) THREADS=2
  PATHS_4=plain,plain-graphs2,transfer:3,resident:3,resident-cl:3,workers2:3,streams2:3 PATHS_5=resident:3 GRID_ROUNDS=2 LONG_EPOCHS=1 LONG_EVERY=2
  STEP_5A=(--device cpu --width 0.125 --reps 2 --eval-batch 16) LAYOUTS_5A=(--channels-last)
  LONG_ROUNDS=${LONG_ROUNDS:-6} LONG_SECONDS=${LONG_SECONDS:-5} LONG_WORKERS=${LONG_WORKERS:-2} LONG_GRAPHS=false
  LONG_CHANNELS_LAST=${LONG_CHANNELS_LAST:-false}
else
  # 3 epochs over 3 rounds: a kept cross-entropy graph captures last-batch sizes and replays them
  SMOKE_RUN=(--set rounds=3 --set train.local_epochs=3)
  MODEL=(--set model.name=resnet18 --set model.width=1.0) BENCH=(--device "$DEVICE") THREADS=8
  # Step 4's paths in order of need (docs/gpu.md has their measured round times; what the step's time
  # limit cuts off is the end of the list): the transfer path for the speed-up, the default path (CUDA
  # graphs, channels-last) over 22 rounds for the 1,600-round projection, the plain loop, 4 graphed
  # trainer threads, graphs in the NCHW layout (their accuracies must agree with the first), one and
  # four graphed plain loops on their own streams (does side-by-side training fill the GPU?), the eager
  # resident path.
  PATHS_4=${PATHS_4:-transfer:4,graphs-cl:22,plain,graphs-streams4-cl:22,graphs:22,plain-graphs1,plain-graphs4,resident:6}
  # DepthFL's exits hold depthwise convolutions, which torch hands to cuDNN in float32 only in the channels-last
  # layout (its own kernels otherwise); side by side, DepthFL's small kernels may overlap more than FedAvg's
  PATHS_5=${PATHS_5:-graphs:5,graphs-cl:5,graphs-streams4:5}
  STEP_5A=(--device "$DEVICE" --width 1.0 --reps 40 --eval-batch 1024) LAYOUTS_5A=("" --channels-last)
  GRID_ROUNDS=30 LONG_EPOCHS=5
  LONG_EVERY=20 LONG_ROUNDS=${LONG_ROUNDS:-400} LONG_SECONDS=${LONG_SECONDS:-480} LONG_WORKERS=${LONG_WORKERS:-1}
  LONG_GRAPHS=${LONG_GRAPHS:-true} LONG_CHANNELS_LAST=${LONG_CHANNELS_LAST:-true}  # the fastest serial path measured (docs/gpu.md)
fi

{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"; nproc
  $PY -c "from fedbench.tracking.provenance import code_version; print('fedbench code', code_version())"
} >"$OUT/env.txt" 2>&1

if [ "$DEVICE" = cpu ] && [[ $STEPS == *" 1"* ]]; then
  echo "== 1, 1b, 1c compare the memory model with CUDA's allocator: skipped on the CPU"
  STEPS=${STEPS//" 1 "/ }; STEPS=${STEPS//" 1b "/ }; STEPS=${STEPS//" 1c "/ }
fi
if [[ $STEPS == *" 1 "* ]]; then
  echo "== 1. memory model vs CUDA allocator"
  timeout 300 $PY "$ROOT/benchmarks/bench_memory_cuda.py" --per-tensor --json "$OUT/memory_cuda.json" >"$OUT/memory_cuda.md" 2>&1
  tail -n 1 "$OUT/memory_cuda.md"
fi
if [[ $STEPS == *" 1b "* ]]; then
  echo "== 1b. memory model vs CUDA allocator, cuDNN workspace capped at 0"
  CUDNN_CONV_WSCAP_DBG=0 timeout 150 $PY "$ROOT/benchmarks/bench_memory_cuda.py" --json "$OUT/memory_cuda_ws0.json" \
    >"$OUT/memory_cuda_ws0.md" 2>&1
  tail -n 1 "$OUT/memory_cuda_ws0.md"
fi
if [[ $STEPS == *" 1c "* ]]; then
  echo "== 1c. what CUDA holds beyond the memory model, for the 4 largest excesses"
  timeout 240 $PY "$ROOT/benchmarks/bench_memory_cuda.py" --models resnet18,cnn --explain 4 >"$OUT/memory_explain.md" 2>&1
  grep "^###" "$OUT/memory_explain.md"
fi
if [[ $STEPS == *" 2 "* ]]; then
  echo "== 2. every method, ${SMOKE_RUN[*]} on --device $DEVICE"
  timeout "$SMOKE_SECONDS" $PY "$ROOT/benchmarks/accuracy_grid.py" \
    --methods "$($PY -c 'from fedbench import registry; print(",".join(p.name for p in registry.available("methods")))')" \
    --set data.dataset=synthetic --set data.num_clients=8 --set clients_per_round=4 "${SMOKE_RUN[@]}" \
    --set "device=$DEVICE" --set cuda_graphs=false --set tracking.enabled=false --out "$OUT/smoke.jsonl"
fi
if [[ $STEPS == *" 2g "* ]] && [ "$DEVICE" = cpu ]; then
  echo "== 2g. every method graphed vs eager: skipped on the CPU (tests/test_graphs.py holds them bit for bit)"
elif [[ $STEPS == *" 2g "* ]]; then
  echo "== 2g. every method, the runs of step 2 with CUDA graphs, against step 2's eager runs"
  timeout "$SMOKE_SECONDS" $PY "$ROOT/benchmarks/accuracy_grid.py" \
    --methods "$($PY -c 'from fedbench import registry; print(",".join(p.name for p in registry.available("methods")))')" \
    --set data.dataset=synthetic --set data.num_clients=8 --set clients_per_round=4 "${SMOKE_RUN[@]}" \
    --set "device=$DEVICE" --set cuda_graphs=true --set tracking.enabled=false --out "$OUT/smoke_graphs.jsonl"
  $PY "$ROOT/benchmarks/compare_runs.py" "$OUT/smoke.jsonl" "$OUT/smoke_graphs.jsonl" --names eager,graphs \
    | tee "$OUT/smoke_graphs.md" | tail -n 1
fi

if [[ $STEPS == *" 3 "* ]] && [ -n "$FMNIST" ] && [ "$GRID_SECONDS" -gt 0 ]; then
  echo "== 3. full-width ResNet18 baselines on Fashion-MNIST (stops after ${GRID_SECONDS}s)"
  timeout "$GRID_SECONDS" $PY "$ROOT/benchmarks/accuracy_grid.py" \
    --methods "$GRID_METHODS" \
    --set data.dataset=fashion-mnist --set "data.data_dir=$FMNIST" "${MODEL[@]}" \
    --set fleet.profile=relative --set data.partition=dirichlet --set data.alpha=0.5 \
    --set data.num_clients=100 --set rounds=$GRID_ROUNDS --set train.local_epochs=1 --set eval_every=5 --set seed=42 \
    --set threads=$THREADS --set "device=$DEVICE" --set tracking.enabled=false --out "$OUT/grid.jsonl"
fi

if [[ $STEPS == *" 4 "* ]]; then
  echo "== 4. GPU path: transfer vs resident vs CUDA graphs vs K trainers per GPU, plain loop, profiles"
  timeout 330 $PY "$ROOT/benchmarks/bench_gpu_path.py" ${FMNIST:+--data-dir "$FMNIST"} "${BENCH[@]}" \
    --paths "$PATHS_4" --profile --out "$OUT" 2>&1 | tail -n 12
fi
if [[ $STEPS == *" 5 "* ]]; then
  echo "== 5. DepthFL round vs FedAvg round: one step and one evaluation forward in both layouts, then $PATHS_5"
  for layout in "${LAYOUTS_5A[@]}"; do  # seconds: one step's kernels and time, evaluation's forward at batch 1024
    timeout 120 $PY "$ROOT/benchmarks/bench_depthfl_feddyn.py" "${STEP_5A[@]}" $layout \
      --profile-forward "$OUT/profile_depthfl_forward${layout:+-cl}.txt" 2>&1
  done | tee "$OUT/depthfl_steps.md" | grep "^| depthfl"
  mkdir -p "$OUT/depthfl"
  timeout 240 $PY "$ROOT/benchmarks/bench_gpu_path.py" ${FMNIST:+--data-dir "$FMNIST"} "${BENCH[@]}" --paths "$PATHS_5" \
    --methods fedavg,depthfl --profile --out "$OUT/depthfl" 2>&1 | tail -n 6
  cp "$OUT/depthfl/gpu_path.md" "$OUT/depthfl_ratio.md"; cp "$OUT/depthfl/gpu_path.json" "$OUT/depthfl_ratio.json"
  cp "$OUT/depthfl"/profile_depthfl_graphs*.txt "$OUT/" 2>/dev/null  # where a DepthFL round's GPU time goes
  rm -r "$OUT/depthfl"
fi
CKPT_DIR=${CKPT_DIR:-gpu-checkpoints} LONG_METHODS=${LONG_METHODS:-neulite,fedavg,exclusivefl,allsmall}
OUTBOX="$CKPT_DIR/outbox"
# The trip back: at most MAX_FILES (8) files of at most 16 MiB come back from a call, TRAVEL_MIB
# (60) MiB in all, so each checkpoint travels in parts (PART_SIZE, 15M) named NAME.ckpt.part-KK-of-NN.
# send_parts moves parts from the outbox into OUT while both limits allow; what is left waits in the
# outbox for the next call to the same machine (STEPS="6b").
send_parts() {
  local budget room part size
  budget=${TRAVEL_BYTES:-$(( ${TRAVEL_MIB:-60} * 1048576 ))}
  room=$(( ${MAX_FILES:-8} - $(find "$OUT" -type f | wc -l) ))
  for part in $(find "$OUTBOX" -type f 2>/dev/null | sort); do  # OUTBOX/<order>/NAME.ckpt.part-KK-of-NN
    size=$(stat -c %s "$part")
    if [ "$room" -le 0 ] || [ "$size" -gt "$budget" ]; then break; fi
    mv "$part" "$OUT/"; budget=$((budget - size)); room=$((room - 1))
  done
  local left; left=$(find "$OUTBOX" -type f 2>/dev/null | wc -l)
  if [ "$left" -gt 0 ]; then
    echo "$left checkpoint part(s) wait in $OUTBOX: fetch them with STEPS=\"6b\" on this machine before it goes back"
  else
    echo "every checkpoint part is in $OUT"
  fi
}
if [[ $STEPS == *" 6 "* ]] && [ -n "$FMNIST" ]; then
  mkdir -p "$CKPT_DIR"
  # Checkpoints that travelled back in parts are put together again, once all their parts are here
  # (they may come out over several calls); with one missing, nothing runs, so no run starts over.
  for first in "$CKPT_DIR"/*.ckpt.part-00-of-*; do
    [ -f "$first" ] || continue
    name=${first%.part-00-of-*} count=${first##*-of-}
    missing=()
    for ((k = 0; k < 10#$count; k++)); do
      part=$(printf "%s.part-%02d-of-%s" "$name" "$k" "$count")
      [ -f "$part" ] || missing+=("$(basename "$part")")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      echo "6. $(basename "$name") is missing ${missing[*]}: carry them into $CKPT_DIR; step 6 not run"; exit 1
    fi
    cat "$name".part-*-of-"$count" >"$name" && rm "$name".part-*-of-"$count"
  done
  EXECUTOR=(--set executor=serial)
  [ "$LONG_WORKERS" -gt 1 ] && EXECUTOR=(--set "executor=${LONG_EXECUTOR:-process}" --set workers="$LONG_WORKERS")
  echo "== 6. long horizon: $LONG_METHODS, stops after ${LONG_SECONDS}s, checkpoints in $CKPT_DIR"
  timeout $((LONG_SECONDS + 120)) $PY "$ROOT/benchmarks/accuracy_grid.py" --methods "$LONG_METHODS" \
    --set data.dataset=fashion-mnist --set "data.data_dir=$FMNIST" "${MODEL[@]}" \
    --set data.partition=dirichlet --set data.alpha=0.5 --set data.num_clients=100 --set fleet.profile=paper \
    --set rounds="$LONG_ROUNDS" --set train.local_epochs=$LONG_EPOCHS --set eval_every=$LONG_EVERY --set seed=42 \
    --set threads=$THREADS --set "device=$DEVICE" "${EXECUTOR[@]}" \
    --set cuda_graphs="$LONG_GRAPHS" --set channels_last="$LONG_CHANNELS_LAST" --set tracking.enabled=false --checkpoint-dir "$CKPT_DIR" \
    --stop-after "$LONG_SECONDS" --out "$OUT/long.jsonl"
  ls -l "$CKPT_DIR"
  # Each checkpoint, in LONG_METHODS order, is cut into parts in the outbox, and as many as may
  # come back go into OUT now.
  rm -rf "$OUTBOX"
  order=0
  for method in ${LONG_METHODS//,/ }; do
    for c in "$CKPT_DIR/$method"-*.ckpt; do
      [ -f "$c" ] || continue
      order=$((order + 1)); box=$(printf "%s/%03d" "$OUTBOX" $order); mkdir -p "$box"
      split -b "${PART_SIZE:-15M}" -d -a 2 "$c" "$box/$(basename "$c").part-"
      parts=("$box/$(basename "$c").part-"*)
      for part in "${parts[@]}"; do mv "$part" "$part-of-$(printf %02d ${#parts[@]})"; done
    done
  done
  send_parts
fi
if [[ $STEPS == *" 6b "* ]]; then
  echo "== 6b. the checkpoint parts step 6 could not send back yet"
  send_parts
fi
