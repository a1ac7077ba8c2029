#!/usr/bin/env bash
# One prepared GPU session (device tool): CUDA tests, inference and whole-slide
# timings, then the default recipe trained on the GPU (3 CV folds + all patients at
# once, augmentation in loader processes). Everything is logged to $OUT.
#   needs: TNBC in .devdata/tnbc, wheels nucseg's dependencies lack there in .whl/
#   BUDGET_MIN: training minutes per run (default 4.5)
#   AUGMENT_ON: cpu (the default recipe: scipy augmentation in loader processes) or device
#       (torch augmentation of whole batches on the GPU, no CPU bottleneck)
#   CV: kfold (3 folds + the all-patient model, 3 loader processes each; default) or
#       lopo (the paper's 9 leave-one-patient-out folds, 1 loader process each)
#   TRAIN_ONLY=1: skip the tests and benchmarks (about 4 minutes more for training)
#   ARCH_KWARGS: JSON for --arch-kwargs, e.g. '{"width": 32, "depth": 4}' (a larger network)
#   INIT: a CV run folder to continue fold by fold (--init-weights; carry it with the run
#       tool, e.g. carry ["runs/gpu_cv"], and give LR, e.g. 5e-4); the all-patient model then
#       continues from runs/gpu_all when it is there
set -u
export PYTHONUNBUFFERED=1 NUCSEG_DATA=$PWD/.devdata
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; LOG=$OUT/log.txt
BUDGET_MIN=${BUDGET_MIN:-4.5}
step() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
step setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1
lscpu | grep -E "Model name|^CPU\(s\)" >>"$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site
timeout 150 python3 -m pip install -q --no-build-isolation --no-deps . >>"$LOG" 2>&1 || { step "build failed"; exit 1; }
python3 -c "import torch, nucseg; print('torch', torch.__version__, torch.cuda.get_device_name())" >>"$LOG" 2>&1
if [ "${TRAIN_ONLY:-0}" != 1 ]; then
step "cuda tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_inference.py tests/test_models.py >>"$LOG" 2>&1
step "inference benchmark"
NUCSEG_BENCH_FULL_VGG=0 timeout 120 python3 -m pytest -q -p no:cacheprovider benchmarks/bench_inference.py --benchmark-only \
  -k "cuda or default" --benchmark-columns=min,median,rounds --benchmark-json "$OUT/bench_inference.json" >>"$LOG" 2>&1
step "whole-slide benchmark"
NUCSEG_BENCH_WSI_SIDE=4096 NUCSEG_BENCH_WSI_TILE=1024 timeout 150 python3 -m pytest -q -s -p no:cacheprovider benchmarks/bench_wsi.py \
  --benchmark-only -k "default and cuda" --benchmark-json "$OUT/bench_wsi.json" >>"$LOG" 2>&1
fi
step "training ${BUDGET_MIN} min per run"
common=(--data .devdata/tnbc --device cuda --iterations 100000 --time-budget "$BUDGET_MIN" --no-tune --quiet
        --augment-on "${AUGMENT_ON:-cpu}")
[ -n "${ARCH_KWARGS:-}" ] && common+=(--arch-kwargs "$ARCH_KWARGS")
[ -n "${LR:-}" ] && common+=(--lr "$LR")
cv_init=(); all_init=()
if [ -n "${INIT:-}" ]; then
  cv_init=(--init-weights "$INIT")
  [ -f runs/gpu_all/default.safetensors ] && { cp -r runs/gpu_all runs/gpu_all_init; all_init=(--init-weights runs/gpu_all_init/default.safetensors); }
  rm -rf runs/gpu_all; [ "$INIT" = runs/gpu_cv ] && { mv runs/gpu_cv runs/gpu_cv_init; cv_init=(--init-weights runs/gpu_cv_init); }
fi
if [ "${CV:-kfold}" = lopo ]; then
  for f in 0 1 2 3 4 5 6 7 8; do
    nucseg-train "${common[@]}" ${cv_init[@]+"${cv_init[@]}"} --workers 1 --out runs/gpu_cv --cv lopo --fold $f >"$OUT/train_fold$f.txt" 2>&1 &
  done
else
  for f in 0 1 2; do
    nucseg-train "${common[@]}" ${cv_init[@]+"${cv_init[@]}"} --workers 3 --out runs/gpu_cv --cv kfold --folds 3 --fold $f >"$OUT/train_fold$f.txt" 2>&1 &
  done
  nucseg-train "${common[@]}" ${all_init[@]+"${all_init[@]}"} --workers 3 --out runs/gpu_all >"$OUT/train_all.txt" 2>&1 &
fi
sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >>"$LOG"; uptime >>"$LOG"
wait
step "pack"
# Within the device tool's limits (8 files of 16 MB): one meta.tar.gz, one weights file per
# run (float16 when over 15 MB). Here: python scripts/gpu_runs_transfer.py unpack FILES_AT DEST
# rebuilds DEST/runs/gpu_cv/fold_*, DEST/runs/gpu_all
python3 scripts/gpu_runs_transfer.py pack "$OUT" $(ls -d runs/gpu_cv/fold_* runs/gpu_all 2>/dev/null) >>"$LOG" 2>&1
cat "$OUT"/train_*.txt >>"$LOG"; rm -f "$OUT"/train_*.txt
step done
