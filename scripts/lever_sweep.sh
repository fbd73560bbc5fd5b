#!/usr/bin/env bash
# The domain-shift lever study (models/EVALUATION.md, "What each lever gave").
# Runs several classifier trainings side by side, each leaving a source out
# (LOSO), on one machine: the lent GPU machine here (16 cores), or any box.
#   scripts/lever_sweep.sh OUT_DIR [PACKED_CACHE]
# PACKED_CACHE (from `python -m scripts.data --pack`) is unpacked into .cache/ first.
set -euo pipefail
out=${1:?usage: lever_sweep.sh OUT_DIR [PACKED_CACHE]}
py=${PYTHON:-python3}
[ -n "${2:-}" ] && $py -m scripts.data --unpack "$2"
mkdir -p "$out"
common=(classifier --quiet --workers "${WORKERS:-3}" --epochs "${EPOCHS:-14}")
run() { name=$1; shift; $py -m scripts.train "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1 & }
run loso_chula_recipe   --exclude-source chula
run loso_chula_noaug    --exclude-source chula --aug 0
run loso_chula_nobg     --exclude-source chula --no-bg-norm
run loso_chula_ssl      --exclude-source chula --ssl chula,bccd,txl_pbc
run loso_raabin_recipe  --exclude-source raabin
wait
grep -h "done in" "$out"/*.log
