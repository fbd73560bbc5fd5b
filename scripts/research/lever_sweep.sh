#!/usr/bin/env bash
# The domain-shift lever study (models/EVALUATION.md, "What each lever gave").
# Short classifier trainings that each leave a source out (LOSO), differing in
# one lever at a time; evaluated by `python -m scripts.training.evaluate --levers OUT_DIR`.
#   scripts/research/lever_sweep.sh OUT_DIR [PACKED_CACHE]
# Defaults fit a 2-core CPU (EPOCHS=6 x EPOCH_SIZE=6400 each, one run at a
# time); PARALLEL=1 runs them side by side on a bigger machine.
# PACKED_CACHE (from `python -m scripts.training.data --pack`) is unpacked into .cache/ first.
# ONLY="run1 run2" limits the sweep to those runs.
set -euo pipefail
out=${1:?usage: lever_sweep.sh OUT_DIR [PACKED_CACHE]}
py=${PYTHON:-python3}
[ -n "${2:-}" ] && $py -m scripts.training.data --unpack "$2"
mkdir -p "$out"
common=(classifier --quiet --workers "${WORKERS:-2}" --epochs "${EPOCHS:-6}" --epoch-size "${EPOCH_SIZE:-6400}")
run() {
  name=$1; shift
  if [ -f "$out/$name/classifier_train.json" ]; then echo "skip $name (done)"; return; fi
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  if [ "${PARALLEL:-0}" = 1 ]; then
    $py -m scripts.training.train "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1 &
  else
    $py -m scripts.training.train "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
  fi
}
run loso_chula_recipe   --exclude-source chula
run loso_chula_noaug    --exclude-source chula --aug 0
run loso_chula_nobg     --exclude-source chula --no-bg-norm
run loso_chula_ssl      --exclude-source chula --ssl chula,bccd,txl_pbc
run loso_chula_stain    --exclude-source chula --stain-norm
run loso_raabin_recipe  --exclude-source raabin
run loso_raabin_stain   --exclude-source raabin --stain-norm
wait
grep -h "done in" "$out"/*/train.log
