#!/usr/bin/env bash
# On a Coral host (x86-64 Debian/Ubuntu with the Edge TPU runtime and compiler installed):
# compile a unet-tf int8 export for the Edge TPU, then segment images with it.
#
#   export/edgetpu/compile_and_predict.sh MODEL_DIR/export/model_int8.tflite OUT_DIR IMAGE...
#
# Needs: edgetpu_compiler (apt install edgetpu-compiler), libedgetpu1-std (the runtime),
# and python3 with numpy, ai-edge-litert, opencv-python-headless, tifffile.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 MODEL_int8.tflite OUT_DIR IMAGE..." >&2
    exit 2
fi
model=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
command -v edgetpu_compiler >/dev/null || { echo "edgetpu_compiler not found: apt install edgetpu-compiler" >&2; exit 2; }

# --show_operations prints which ops were mapped; anything "not mapped" runs on the CPU.
edgetpu_compiler --show_operations --out_dir "$(dirname "$model")" "$model"
compiled="$(dirname "$model")/$(basename "$model" .tflite)_edgetpu.tflite"

# The compiled model keeps the int8 input/output; edge_predict.py reads model_int8.json beside it.
python3 "$here/edge_predict.py" "$compiled" "$@" --out "$out" --delegate libedgetpu.so.1
