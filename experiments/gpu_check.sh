#!/usr/bin/env bash
# The GPU check of TRD (issues 13, 20): the calls, their phases, time budgets and results are described in
# experiments/gpu_check/__init__.py; this runs that folder (its __main__.py).
#
#   experiments/gpu_check.sh --prepare --images DIR [--train-script PATH] [--imagenette TAR]   here: fills .gpu_check/
#   experiments/gpu_check.sh --call 1        on the GPU machine: accuracy (< 6.5 min); results in $OUT
#   experiments/gpu_check.sh --call 2        on the GPU machine: two ranks on one GPU, torch.compile, speed (< 5 min)
#   experiments/gpu_check.sh --dry-run --call 1|2|bench [--out DIR]   CPU, tiny model, same phases (tests/test_gpu_check.py)
#
# Python: $PYTHON, else python3 (on the device machine, the one that holds torch).
set -u
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u experiments/gpu_check "$@"
