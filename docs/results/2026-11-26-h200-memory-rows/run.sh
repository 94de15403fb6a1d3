set -u
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -2
python3 -c "import torch, fedbench; print('torch', torch.__version__, fedbench.__file__)"; nproc
FB=$(python3 -c "import shutil;print(shutil.which('fedbench') or '')")
echo "fedbench at $FB"
for j in 1 2 4 8 16 1 16; do
  d=$(mktemp -d); s=$(date +%s.%N)
  FEDBENCH_TRACE_CACHE=$d timeout 120 python3 -c "import sys; from fedbench.launch import main; sys.argv[0] = 'fedbench'; main()" memory --model all --method all --dataset cifar10 --jobs $j --json > $OUT/rows_j$j.json 2>$OUT/err_j$j.txt
  rc=$?; e=$(date +%s.%N); echo "jobs=$j rc=$rc wall $(python3 -c "print(round($e-$s,2))") s"
  rm -rf $d
done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
rows = {j: json.load(open(f"{out}/rows_j{j}.json"))["rows"] for j in (1, 2, 4, 8, 16) if os.path.getsize(f"{out}/rows_j{j}.json")}
base = rows.get(1)
print({j: (len(r), r == base) for j, r in rows.items()})
PY
