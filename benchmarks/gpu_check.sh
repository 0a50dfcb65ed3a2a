#!/usr/bin/env bash
# The prepared device check: one command, no network, inside 8 minutes on one H100.
#   bash benchmarks/gpu_check.sh [--cpu] [OUT]
# 1. the GPU benchmark (benchmarks/gpu_bench.py) on a Qwen2.5-0.5B-shaped model, random weights from its config
#    (no download): offline and online DPO, ours and TRL's, bf16, 5 measured steps;
# 2. a short real online DPO run in bf16 through the command line (toy "m", 20 steps, LoRA), its history kept;
# 3. every `#| gpu` notebook cell that needs no hub download, through tests/test_gpu_cells.py (hub models swapped for
#    local stand-ins) plus tests/test_gpu.py, on this machine's torch/CUDA.
# --cpu: the same three steps shrunk to seconds on a CPU (tests/test_gpu_check.py runs it), so the script cannot rot.
# The image has torch, transformers, peft and accelerate; anything else dpo_notes needs (trl, datasets, ...) comes as
# wheels in $WHEELS (default benchmarks/wheels, made beforehand with `pip download -d benchmarks/wheels -e .`), installed
# with --no-index when dpo_notes is not importable. Results go to OUT (default gpu_check_out/): bench.json, online/,
# pytest.txt, and times.txt with each step's seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=0; if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; fi
OUT="${1:-gpu_check_out}"; mkdir -p "$OUT"; : > "$OUT/times.txt"
WHEELS="${WHEELS:-benchmarks/wheels}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DPO_NOTES_THREADS="${DPO_NOTES_THREADS:-1}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! python -c "import dpo_notes, trl" 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "gpu_check: dpo_notes is not importable and there is no $WHEELS to install it from" >&2; exit 2; }
  python -m pip install -q --no-index --find-links "$WHEELS" -e .
fi
step() { local name=$1; shift; local t0=$SECONDS; echo "== $name: $*"; "$@"; echo "$name $((SECONDS - t0))" >> "$OUT/times.txt"; }
if [ $CPU = 1 ]; then
  step bench python benchmarks/gpu_bench.py --device cpu --tiny --steps 1 --warmup 1 --impls ours --benches offline --json "$OUT/bench.json"
  step online python -m dpo_notes.cli online-dpo --model_name_or_path toy:s --use_peft true --max_steps 1 \
       --per_device_train_batch_size 2 --max_new_tokens 8 --use_cpu true --disable_tqdm true --output_dir "$OUT/online"
  step cells test -f tests/test_gpu_cells.py -a -f tests/test_gpu.py     # CI runs both itself: here only that they are there
else
  python -c "import torch; assert torch.cuda.is_available(), 'gpu_check: no CUDA device (use --cpu for the dry run)'"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  step bench python benchmarks/gpu_bench.py --steps 5 --warmup 2 --rounds 1 --json "$OUT/bench.json"
  step online python -m dpo_notes.cli online-dpo --model_name_or_path toy:m --use_peft true --bf16 true --max_steps 20 \
       --per_device_train_batch_size 16 --max_new_tokens 32 --disable_tqdm true --output_dir "$OUT/online"
  step cells python -m pytest -q tests/test_gpu_cells.py tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt"
fi
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
hist = [json.loads(l) for l in (out / "online" / "history.jsonl").read_text().splitlines()]
assert any("loss" in h for h in hist), "online run logged no training step"
rows = json.loads((out / "bench.json").read_text())["rows"]
print("bench:", [(r["bench"], r["impl"], round(r["median_step_s"], 4)) for r in rows])
print("online: last", {k: hist[-1][k] for k in ("step", "loss") if k in hist[-1]})
print("times:", (out / "times.txt").read_text().split())
PY
echo "gpu_check: done ($OUT)"
