#!/usr/bin/env bash
# One short GPU session for the paper-scale checks: a tiny smoke pass of every job (stops here if one fails),
# then, in parallel on one GPU, (1) the offline CIFAR-10 zoo on all 50,000 images + the targeted RAP table and the
# RAP cost benchmark, (2) the D-ST paper table (defense_gpu preset) for BadNets and Blend-Kitty. Every job has a
# deadline; what finished is packed into $OUT (results.tgz without weights, logs.tgz).
# Usage: OUT=dir [BUDGET=450] [SMOKE_ONLY=1] bash tools/gpu_slice.sh
# Data: $ADVML_DATA_DIR (else ./.gpudata) must hold cifar10_jpeg.npz (all 50,000 train images; cifar10.npz has 5,000)
# and triggers/d-st/hello_kitty.png.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export ADVML_DATA_DIR=${ADVML_DATA_DIR:-$PWD/.gpudata} ADVML_CACHE_DIR=${ADVML_CACHE_DIR:-$PWD/.gpucache}
PY=${PY:-python3}
OUT=${OUT:-runs/gpu_out}; BUDGET=${BUDGET:-450}
mkdir -p "$OUT" runs/gpu/logs
LOG=runs/gpu/logs
start=$(date +%s)
left() { local l=$(( BUDGET - ($(date +%s) - start) )); [ "$l" -lt 1 ] && l=1; echo "$l"; }  # timeout 0 = none
pack() {
  tar czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='checkpoints' runs/gpu 2>/dev/null
  find "$ADVML_CACHE_DIR" -name info.json | tar czf "$OUT/zoo_info.tgz" -T - 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$LOG/device.txt" 2>&1

ATTACKS=(badnets blend_kitty)
DEFENSES=(d-br d-st baseline2 baseline1)
ZOO=(resnet18_narrow cnn_small vgg16_bn mobilenet_v2)
cell_sets() {  # smoke-size settings of one defense cell
  local s="--set train_size=600 --set test_size=200 --set train.epochs=1"
  case $1 in
    d-br) s+=" --set defense.epochs=1 --set defense.sd.warmup_epochs=1 --set defense.sd.finetune_epochs=1";;
    d-st) s+=" --set defense.encoder.epochs=1 --set defense.classifier.epochs=1 --set defense.sd.warmup_epochs=1"
          s+=" --set defense.sd.finetune_epochs=1";;
    *) s+=" --set defense.encoder.epochs=1 --set defense.classifier.epochs=1";;
  esac
  echo "$s"
}

# --- smoke: every job at toy size, in parallel ------------------------------------------------------------
ZSMOKE="--set epochs=1 --set train_size=1000"
pids=()
for d in "${DEFENSES[@]}"; do
  $PY benchmarks/defense_table.py --preset defense_gpu --attacks blend_kitty --defenses "$d" \
      --out runs/gpu/smoke/defense $(cell_sets "$d") > "$LOG/smoke_$d.log" 2>&1 & pids+=($!)
done
( $PY -m advml zoo train --archs "$(IFS=,; echo "${ZOO[*]}")" $ZSMOKE && \
  $PY benchmarks/transfer_table.py --out runs/gpu/smoke/transfer --set zoo.epochs=1 --set zoo.train_size=1000 \
      --set iters=4 --set n_images=20 --set batch_size=10 --set only_correct=false ) > "$LOG/smoke_transfer.log" 2>&1 &
pids+=($!)
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
echo "smoke done in $(( $(date +%s) - start )) s, failed=$fail" | tee "$LOG/smoke_status.txt"
if [ "$fail" = 1 ] || [ "${SMOKE_ONLY:-0}" = 1 ]; then pack; tar czf "$OUT/logs.tgz" "$LOG"; exit $fail; fi

# --- full ---------------------------------------------------------------------------------------------------
$PY benchmarks/rap_cost.py --batch 250 --iters 20 > "$LOG/rap_cost.log" 2>&1
ZSET="--set epochs=30 --set batch_size=256 --set lr=0.1"
TSET="--set zoo.epochs=30 --set zoo.batch_size=256 --set zoo.lr=0.1 --set iters=400 --set n_images=1000 --set batch_size=500"
pids=()
for a in "${ATTACKS[@]}"; do
  for d in "${DEFENSES[@]}"; do
    timeout "$(left)" $PY benchmarks/defense_table.py --preset defense_gpu --attacks "$a" --defenses "$d" \
        --out runs/gpu/defense > "$LOG/defense_${a}_$d.log" 2>&1 & pids+=($!)
  done
done
zpids=()
for z in "${ZOO[@]}"; do
  timeout "$(left)" $PY -m advml zoo train --archs "$z" $ZSET > "$LOG/zoo_$z.log" 2>&1 & zpids+=($!)
done
( for p in "${zpids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 2; done; done  # not this subshell's children
  for s in resnet18_narrow vgg16_bn; do
    timeout "$(left)" $PY benchmarks/transfer_table.py --surrogates $s --out runs/gpu/transfer $TSET
  done ) > "$LOG/transfer.log" 2>&1 &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
echo "full done in $(( $(date +%s) - start )) s" | tee -a "$LOG/smoke_status.txt"
pack
tar czf "$OUT/logs.tgz" "$LOG"
