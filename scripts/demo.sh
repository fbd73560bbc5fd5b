#!/usr/bin/env bash
# Set up and run the counter on the shipped sample (CPU fallback, no camera):
#   ./scripts/demo.sh
# Installs the runtime package into .venv (no PyTorch), counts the leukocytes
# in samples/slide_pan_train.mp4 (a real-image slide pan) headless with the
# TFLite INT8 model, prints the differential and compares it with the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# the tested versions of every dependency (requirements/README.md)
python -m pip install -q -c requirements/constraints.txt --upgrade pip
python -m pip install -q -c requirements/constraints.txt -e .
data=${WBC_DATA_DIR:-$PWD/.demo-data}
summary="$data/sample_summary.json"
mkdir -p "$data"
# INT8, the precision the Jetson counts in, pinned so the demo's count is the same on every CPU
# (the counter's own default, --precision auto, picks whichever is faster on this CPU).
wbc-counter run --source samples/slide_pan_train.mp4 --backend tflite --precision int8 --headless --target 200 \
  --sample-id DEMO-SAMPLE --data-dir "$data" --summary-json "$summary"
python -m scripts.eval_pan --summary "$summary" --truth samples/slide_pan_train.json
