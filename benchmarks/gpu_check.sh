#!/usr/bin/env bash
# The GPU acceptance command: everything GPU-only, in one go, on a bare machine with one CUDA GPU,
# torch and onnxruntime (no snakemake, no internet). Writes $OUT/gpu_check.md and gpu_check.json.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (or: make gpu-check)
# Budget: the parts' time limits add up to 17.5 minutes; the real total is not measured (no GPU was lent
# yet), so on a 15-minute device budget run it with a timeout. Each part has its own limit, so one slow or failing
# part is reported as such and the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/out/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
summary="$OUT/gpu_check.md"
: >"$summary"

part() {  # part NAME SECONDS COMMAND...: run one part, keep its log, note its exit status
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds}s)" | tee -a "$summary"
    local began=$SECONDS
    timeout --signal=INT "$seconds" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - began))s (log: $name.log)" | tee -a "$summary"
    [ "$rc" -eq 0 ] || status=1
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), torch.__version__)" \
    | tee -a "$summary" || exit 2

# 1. CUDA-only tests: no skipped CUDA graph, bf16 compiled steps track fp32 eager, ORT CUDA parity.
part cuda_tests 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py
# 2. Steps: classic loop vs trainer (vanilla, live teacher, bank), kd and rckd, 1/2/4 concurrent runs,
#    and the bank build time.
part train_speed 300 $PY benchmarks/train_speed.py --device cuda --out "$OUT/train_speed.json"
# 3. Losses on CUDA.
part loss_speed 90 $PY benchmarks/loss_speed.py --device cuda
# 4. Real data: 2 epochs of bf16 compiled vs fp32 eager on Fashion-MNIST (if its files are here).
part fashion 240 $PY benchmarks/fashion_check.py --out "$OUT/fashion.json"
# 5. ImageNet: ms/step of ResNet-34 -> ResNet-18 at batch 256, 224x224 (vanilla, KD, RCKD).
part imagenet_step 180 $PY benchmarks/imagenet_step.py --device cuda --out "$OUT/imagenet_step.json"

for name in cuda_tests train_speed loss_speed fashion imagenet_step; do
    { echo; echo "### $name"; echo; echo '```'; tail -n 40 "$OUT/$name.log"; echo '```'; } >>"$summary"
done
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
record = {}
for name in ("train_speed", "fashion", "imagenet_step"):
    path = out / f"{name}.json"
    record[name] = json.loads(path.read_text()) if path.exists() else None
record["summary_md"] = (out / "gpu_check.md").read_text()
(out / "gpu_check.json").write_text(json.dumps(record, indent=2))
EOF
echo "summary: $summary" && exit $status
