#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("GPU") in one run of under 10 minutes on a CUDA machine:
#   1. the CPU/CUDA agreement tests;
#   2. safnet bench model, lite and paper, 25k points, 1/3/5 views, fp32 and bf16;
#   3. the node latency bench on CUDA (fp32 and bf16);
#   4. a 3-minute stage-3d training on CUDA with train.profile (chunks/s, where a step goes).
# Usage: bash scripts/gpu_check.sh [OUT]   (OUT default gpu_out; needs .venv with a CUDA torch)
# Every step's output goes to OUT/<step>.txt; a failed step is reported and the next one still runs.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_out}
mkdir -p "$OUT"
PY=.venv/bin/python
export PYTHONPATH=$PWD ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST RMW_IMPLEMENTATION=rmw_fastrtps_cpp
step() {  # name command...
  local name=$1; shift
  echo "== $name $(date -u +%H:%M:%S)"
  "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "== $name rc $rc"
}
step device "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
step cuda_tests "$PY" -m pytest -q test/test_model_cuda.py
step bench_model "$PY" -m safnet_ros.cli bench model --presets lite,paper --points 25000 --views 1,3,5 \
    --device cuda --repeats 20 --precision fp32,bf16
for p in fp32 bf16; do
  step "node_latency_$p" env SAFNET_BENCH=1 SAFNET_BENCH_PRECISION=$p SAFNET_BENCH_PARAMS='{"device": "cuda"}' \
      "$PY" -m pytest -q -p no:cacheprovider test/test_ros_node.py -k latency -s
done
# training data: 6 small synthetic rooms (5 train, 1 val), preprocessed
step data bash -c "$PY -m safnet_ros.cli data synth $OUT/raw --scenes 5 --seed 1 --frames 60 --split train --quiet && \
    $PY -m safnet_ros.cli data synth $OUT/raw --scenes 1 --seed 2 --frames 60 --split val --quiet && \
    $PY -m safnet_ros.cli data preprocess $OUT/raw $OUT/pre --workers 8 --frame-step 2"
step train_3d "$PY" -m safnet_ros.cli train config/train_synth_3d.yaml --no-progress \
    --set device=cuda --set data.root="$OUT/pre" --set out="$OUT/run_3d" --set init_2d=models/safnet_lite_synth.pt \
    --set train.epochs=1000 --set train.max_minutes=3 --set train.max_steps_per_epoch=20 \
    --set train.val_every=1000 --set train.num_workers=4 --set train.profile=true
echo "== done $(date -u +%H:%M:%S); outputs in $OUT"
