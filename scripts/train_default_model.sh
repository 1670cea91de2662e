#!/usr/bin/env bash
# Train the full SAFNet (the candidate for models/safnet_lite_synth.pt; docs/model_card.md says which
# model ships and why), its "w/o CSM" ablation and the two baselines it is compared with (Table III),
# then evaluate all four on held-out scenes.
#
#   scripts/train_default_model.sh [PRE] [RUNS]
#
# PRE   preprocessed synthetic scenes (default data/synth_pre; made here when absent:
#       16 training scenes from seed 1, 4 validation scenes from seed 7, so the
#       validation rooms come from a seed never used in training)
# RUNS  output folder (default runs/default_model)
#
# Environment:
#   SAFNET        how to run the CLI (default: `safnet`; e.g. "python3 -m safnet_ros.cli")
#   MINUTES_2D    wall-clock budget of stage 2d (default 0 = the config's epochs)
#   MINUTES_3D    wall-clock budget of each stage-3d run (default 0 = the config's epochs)
#   TRAIN_SETS    extra `--set KEY=VALUE` arguments for every training run
#   EVAL_VIEWS    test views of the evaluation (default 1,3,5)
#   EVAL_ARGS     extra `safnet eval` arguments (e.g. "--scenes 1 --device cpu")
#   STAGE         all (default) | train | eval
#   INIT_2D       a checkpoint whose 2D net the stage-3d runs take (skips stage 2d; e.g. the shipped model)
#   INIT_FROM     a checkpoint every stage-3d run starts from where the weights fit (train's init_from)
#   PARALLEL      stage-3d runs at a time (default 4; 2 on a 2-core CPU with OMP_NUM_THREADS=1)
#
# The stage-3d runs (safnet, safnet_no_csm, concat late fusion, 3D-only pointnet2)
# run in parallel; on one GPU they share it. docs/model_card.md records a run of this script.
set -euo pipefail

PRE=${1:-data/synth_pre}
RUNS=${2:-runs/default_model}
SAFNET=${SAFNET:-safnet}
MINUTES_2D=${MINUTES_2D:-0}
MINUTES_3D=${MINUTES_3D:-0}
TRAIN_SETS=${TRAIN_SETS:-}
EVAL_VIEWS=${EVAL_VIEWS:-1,3,5}
EVAL_ARGS=${EVAL_ARGS:-}
STAGE=${STAGE:-all}
INIT_2D=${INIT_2D:-}
INIT_FROM=${INIT_FROM:-}
PARALLEL=${PARALLEL:-4}
mkdir -p "$RUNS"

if [ ! -f "$PRE/preprocess_summary.json" ]; then
    RAW=${PRE%/}_raw
    $SAFNET data synth "$RAW" --scenes 16 --seed 1 --frames 120 --split train --quiet
    $SAFNET data synth "$RAW" --scenes 4 --seed 7 --frames 120 --split val --quiet
    $SAFNET data preprocess "$RAW" "$PRE" --workers 2 --frame-step 2
fi

if [ "$STAGE" != eval ]; then
    if [ -z "$INIT_2D" ]; then
        # shellcheck disable=SC2086
        $SAFNET train config/train_synth_2d.yaml --no-progress --set data.root="$PRE" --set out="$RUNS/synth_2d" \
            --set train.max_minutes="$MINUTES_2D" $TRAIN_SETS 2>&1 | tee "$RUNS/synth_2d.log"
        INIT_2D="$(cd "$RUNS/synth_2d" && pwd)/model_last.pt"
    fi
    FROM_SET=""; [ -n "$INIT_FROM" ] && FROM_SET="--set init_from=$INIT_FROM"
    PIDS=()
    status=0
    # Table III rows: the full SAFNet, w/o CSM, concat late fusion (eq. 1), PointNet++ alone.
    for run in safnet:safnet safnet_no_csm:safnet concat:concat pointnet2:pointnet2; do
        name=${run%%:*}; variant=${run##*:}
        overrides="{}"; [ "$name" = safnet_no_csm ] && overrides="{csm: false}"
        # shellcheck disable=SC2086
        $SAFNET train config/train_synth_3d.yaml --no-progress --set data.root="$PRE" --set out="$RUNS/$name" \
            --set model.variant=$variant --set "model.overrides=$overrides" --set init_2d="$INIT_2D" $FROM_SET \
            --set train.max_minutes="$MINUTES_3D" $TRAIN_SETS >"$RUNS/$name.log" 2>&1 &
        PIDS+=("$!")
        if [ "${#PIDS[@]}" -ge "$PARALLEL" ]; then
            for pid in "${PIDS[@]}"; do wait "$pid" || status=1; done
            PIDS=()
        fi
    done
    for pid in "${PIDS[@]}"; do wait "$pid" || status=1; done
    tail -n 3 "$RUNS"/safnet.log "$RUNS"/safnet_no_csm.log "$RUNS"/concat.log "$RUNS"/pointnet2.log
    [ "$status" = 0 ] || { echo "a stage-3d run failed (logs in $RUNS)" >&2; exit 1; }
fi

if [ "$STAGE" != train ]; then
    # Table I rows on stdout (and RUNS/eval.txt); RUNS/eval/ holds eval.json, per_class.csv and the plots.
    # shellcheck disable=SC2086
    $SAFNET eval --model "$RUNS/safnet/model_last.pt" --model "$RUNS/safnet_no_csm/model_last.pt" \
        --model "$RUNS/concat/model_last.pt" --model "$RUNS/pointnet2/model_last.pt" \
        --data "$PRE" --split val --views "$EVAL_VIEWS" --no-progress --out "$RUNS/eval" $EVAL_ARGS \
        | tee "$RUNS/eval.txt"
fi
