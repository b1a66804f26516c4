#!/usr/bin/env bash
# One-shot GPU check of TRD (issue 13): the phases, their time budgets and the results are described in
# scripts/gpu_check.py.
#
#   scripts/gpu_check.sh --prepare --images DIR [--train-script PATH]   here, with network: fills .gpu_check/
#   scripts/gpu_check.sh                                                 on the GPU machine (< 8 min); results in $OUT
#   scripts/gpu_check.sh --dry-run [--out DIR]                           CPU, tiny model, same phases (tested in CI)
#
# Python: $PYTHON, else python3 (on the device machine, the one that holds torch).
set -u
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u scripts/gpu_check.py "$@"
