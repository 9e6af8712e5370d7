#!/usr/bin/env bash
# One command for a CUDA machine with this repo copied in: install the package, benchmark the
# default model (with the fp32/bf16, channels_last and torch.compile comparisons), train the default
# preset for one epoch, draw 10,000 images with DPM-Solver++ 20 and score them, and write everything
# into one JSON (OUT/gpu_check.json) with the seconds each stage took. Planned to fit in 8 minutes
# on one H200; every stage is timed, so a slower machine says where the time went.
#
#   bash scripts/gpu_check.sh                          # on the GPU machine
#   bash scripts/gpu_check.sh --device cpu --dry       # the same path on a CPU, tiny sizes (tests)
#
# Options: --device cuda|cpu (default cuda), --dry (tiny preset, few steps and images), --out DIR
# (default gpu-check), --cache DIR (a folder holding mnist.npz, the data cache: machines with no
# network need it carried in). Needs python3 with torch, numpy, pillow, matplotlib, tqdm and
# safetensors (the CUDA image has them); installs only this package, with no download.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda DRY=0 OUT=gpu-check CACHE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --dry) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PY:-python3}
mkdir -p "$OUT"
[ -n "$CACHE" ] && export MNIST_DIFFUSION_CACHE="$CACHE"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import mnist_diffusion" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, numpy, PIL, matplotlib, tqdm, safetensors" || {
  echo "gpu_check.sh: python3 lacks one of torch, numpy, pillow, matplotlib, tqdm, safetensors" >&2; exit 2; }
MD=("$PY" -m mnist_diffusion)

if [ "$DRY" = 1 ]; then
  BENCH=(--preset tiny --quick --no-memory --sample-images 8 --batch-size 16 --compare precision)
  TRAIN=(--preset tiny --max-steps 4 --save-interval 4 --sample-interval 4 --precision fp32)
  EVAL=(--num-samples 64 --noise-mse-images 64 --batch-size 64)
else
  BENCH=(--preset default --batch-size 1024 --sample-images 1024 --compare)
  TRAIN=(--preset default --epochs 1 --batch-size 512 --micro-batch 512 --lr 2e-3 --warmup-steps 20)
  EVAL=(--num-samples 10000 --batch-size 2500)
fi

stage() {  # stage NAME COMMAND...: run, time, and keep its seconds
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  echo "== $name: $*" >&2
  "$@"
  echo "$name $(( $(date +%s%N) - t0 ))" >> "$OUT/stages.txt"  # nanoseconds
}

: > "$OUT/stages.txt"
stage data "${MD[@]}" data --dataset mnist --no-download
stage benchmark "${MD[@]}" benchmark --device "$DEVICE" "${BENCH[@]}" --json "$OUT/benchmark.json"
stage train "${MD[@]}" train --dataset mnist --device "$DEVICE" --output-dir "$OUT/run" --no-progress "${TRAIN[@]}"
stage evaluate "${MD[@]}" evaluate --checkpoint "$OUT/run/checkpoints/last.pt" --device "$DEVICE" --sampler dpmpp \
  --steps 20 --no-progress --json "$OUT/evaluate.json" "${EVAL[@]}"

"$PY" - "$OUT" "$DEVICE" "$DRY" <<'EOF'
import csv, json, subprocess, sys
from pathlib import Path
out, device, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
stages = {line.split()[0]: int(line.split()[1]) / 1e9 for line in (out / "stages.txt").read_text().splitlines()}
rows = list(csv.DictReader(open(out / "run" / "loss.csv")))
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except OSError:
    gpu = None
bench, ev = json.loads((out / "benchmark.json").read_text()), json.loads((out / "evaluate.json").read_text())
report = {"device": device, "dry": dry, "gpu": gpu, "seconds": stages, "total_seconds": sum(stages.values()),
          "benchmark": {"machine": bench["machine"], "training_images_per_s": bench["training"]["images_per_s"],
                        "sampling": {k: v["images_per_s"] for k, v in bench["sampling"].items()},
                        "compare": {k: {"train": v.get("train_ratio"), "sample": v.get("sample_eval_ratio")}
                                    for k, v in bench.get("compare", {}).items()}},
          "training": {"steps": int(rows[-1]["step"]), "loss": float(rows[-1]["loss"]),
                       "images_per_s": [float(r["images_per_s"]) for r in rows]},
          "evaluate": {k: ev[k] for k in ("n", "fid", "fid_floor", "precision", "recall", "recognizable")},
          "sampling_seconds_for_n": stages["evaluate"]}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: report[k] for k in ("device", "total_seconds", "seconds")}, indent=2))
EOF
echo "wrote $OUT/gpu_check.json"
