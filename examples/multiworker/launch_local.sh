#!/usr/bin/env bash
# Two workers on this machine, each its own process with its own TF_CONFIG: the smallest
# multi-worker run, for trying the setup before a cluster. Worker 0 is the chief and writes
# the model folder; the others write nothing.
#
#   examples/multiworker/launch_local.sh IMAGES_DIR MASKS_DIR OUT_DIR [more unet-tf train options]
set -euo pipefail
images=$1 masks=$2 out=$3
shift 3
workers='["localhost:23456", "localhost:23457"]'
pids=()
for index in 0 1; do
    TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $index}}" \
        unet-tf train --images "$images" --masks "$masks" --out "$out" \
        --strategy multiworker "$@" > "worker$index.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 worker0.log worker1.log
exit $status
