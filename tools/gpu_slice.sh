#!/usr/bin/env bash
# One short GPU session for the paper-scale checks, through `advml bench` at the specs' `gpu` scale: a smoke pass
# of both specs first (stops there if one fails), then in parallel on one GPU (1) the offline CIFAR-10 zoo on all
# 50,000 images (four processes) followed by the targeted RAP table (configs/seed/table3_rap.yaml), and (2) the
# D-ST/D-BR table (configs/seed/table2_defense.yaml), one process per cell. Every job has a deadline; the bench
# folders (without weights) and logs are packed into $OUT.
# Usage: OUT=dir [BUDGET=450] [SMOKE_ONLY=1] bash tools/gpu_slice.sh
# Data: $ADVML_DATA_DIR (else ./.gpudata) must hold cifar10_jpeg.npz (all 50,000 train images; cifar10.npz has only
# 5,000 and is refused for full-size runs) and triggers/d-st/hello_kitty.png. Python packages the device image
# lacks (kornia, kornia_rs, pydantic, pydantic_core, annotated_types, typing_inspection) travel as wheels.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export ADVML_DATA_DIR=${ADVML_DATA_DIR:-$PWD/.gpudata} ADVML_CACHE_DIR=${ADVML_CACHE_DIR:-$PWD/.gpucache}
PY=${PY:-python3}
OUT=${OUT:-runs/gpu_out}; BUDGET=${BUDGET:-450}
R=runs/gpu; LOG=$R/logs
mkdir -p "$OUT" "$LOG"
start=$(date +%s)
left() { local l=$(( BUDGET - ($(date +%s) - start) )); [ "$l" -lt 1 ] && l=1; echo "$l"; }  # timeout 0 = none
pack() {
  tar czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='checkpoints' "$R" 2>/dev/null
  find "$ADVML_CACHE_DIR" -name info.json | tar czf "$OUT/zoo_info.tgz" -T - 2>/dev/null
}
cells() { $PY -c "import sys; from advml.bench import load_spec; print(' '.join(c.id for c in load_spec(sys.argv[1]).cells(sys.argv[2])))" "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$LOG/device.txt" 2>&1
T2=configs/seed/table2_defense.yaml; T3=configs/seed/table3_rap.yaml

# --- smoke: both specs at toy size ---------------------------------------------------------------------------
$PY -m advml bench $T2 --preset smoke --out $R/smoke_t2 > "$LOG/smoke_t2.log" 2>&1 & p1=$!
$PY -m advml bench $T3 --preset smoke --out $R/smoke_t3 > "$LOG/smoke_t3.log" 2>&1 & p2=$!
fail=0; wait $p1 || fail=1; wait $p2 || fail=1
echo "smoke done in $(( $(date +%s) - start )) s, failed=$fail" | tee "$LOG/status.txt"
if [ "$fail" = 1 ] || [ "${SMOKE_ONLY:-0}" = 1 ]; then pack; tar czf "$OUT/logs.tgz" "$LOG"; exit $fail; fi

# --- gpu scale ------------------------------------------------------------------------------------------------
pids=()
for c in $(cells $T2 gpu); do  # one process per cell: the GPU interleaves them
  timeout "$(left)" $PY -m advml bench $T2 --preset gpu --out $R/table2 --only "$c" > "$LOG/t2_$c.log" 2>&1 &
  pids+=($!)
  sleep 2  # let the first process write the bench's spec.yaml
done
zpids=()
for z in resnet18_narrow cnn_small vgg16_bn mobilenet_v2; do
  timeout "$(left)" $PY -m advml zoo train --archs $z --set epochs=30 --set batch_size=256 --set lr=0.1 \
      > "$LOG/zoo_$z.log" 2>&1 & zpids+=($!)
done
( for p in "${zpids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 2; done; done  # not this subshell's children
  timeout "$(left)" $PY -m advml bench $T3 --preset gpu --out $R/table3 ) > "$LOG/t3.log" 2>&1 &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
$PY -m advml report $R/table2 > /dev/null 2>&1
$PY -m advml report $R/table3 > /dev/null 2>&1
echo "gpu scale done in $(( $(date +%s) - start )) s" | tee -a "$LOG/status.txt"
pack
tar czf "$OUT/logs.tgz" "$LOG"
