#!/usr/bin/env bash
# GPU whole-slide timing (device tool): benchmarks/bench_wsi.py with the bundled model
# on the GPU and on all CPU cores of the same machine, on synthetic slides of
# ${SIDE}^2 and (2 x ${SIDE})^2 px at 0.25 um/px in ${TILE} px tiles.
#   needs: wheels nucseg's dependencies lack there in .whl/ (see gpu_session.sh)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; LOG=$OUT/log.txt
SIDE=${SIDE:-6144}; TILE=${TILE:-1024}
step() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
step setup
nvidia-smi --query-gpu=name --format=csv,noheader >>"$LOG" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site
timeout 150 python3 -m pip install -q --no-build-isolation --no-deps . >>"$LOG" 2>&1 || { step "build failed"; exit 1; }
step "whole-slide benchmark side $SIDE tile $TILE"
for dev in cuda cpu; do  # the GPU first: it is what this script is for
  NUCSEG_BENCH_THREADS=$(nproc) NUCSEG_BENCH_WSI_SIDE=$SIDE NUCSEG_BENCH_WSI_TILE=$TILE timeout ${WSI_TIMEOUT:-120} \
    python3 -m pytest -q -s -p no:cacheprovider benchmarks/bench_wsi.py --benchmark-only -k "default and $dev" \
    --benchmark-json "$OUT/bench_wsi_$dev.json" >>"$LOG" 2>&1
done
step done
