#!/usr/bin/env bash
# Run timm's train.py with TRD under torchrun on this node: one node, or one node of several.
#
#   scripts/train_node.sh RECIPE DATA_DIR [NPROC_PER_NODE [train.py arguments ...]]
#
#   RECIPE          a YAML for train.py's -c, e.g. recipes/resnet50_a1_trd.yaml
#   DATA_DIR        the dataset folder train.py reads (--data-dir), e.g. /data/imagenet with train/ and val/
#   NPROC_PER_NODE  processes on this node, one per GPU (default: the GPUs nvidia-smi lists, else 1)
#   the rest        passed to train.py unchanged: --output, --experiment, -b, --log-wandb, --device cpu, ...
#
# Environment:
#   TIMM_TRAIN_SCRIPT  timm's train.py (else ./train.py); timm's pip package does not ship it
#   NNODES             nodes in the job (default 1: torchrun --standalone)
#   With NNODES > 1, one of:
#     RDZV_ENDPOINT    host:port of the c10d rendezvous, the same on every node (e.g. the first node:29500);
#                      torchrun numbers the nodes itself. RDZV_ID (default $SLURM_JOB_ID, else "trd") names the job.
#     MASTER_ADDR      the first node's address, with MASTER_PORT (default 29500) and this node's NODE_RANK
#                      (0 .. NNODES-1): torchrun's static rendezvous.
#   PYTHON             the python that has torch, timm and timm-trd (default: python3)
#   TORCHRUN_ARGS      more torchrun options, e.g. "--local-addr 10.0.0.5" or "--rdzv-conf join_timeout=900"
#   MAX_RESTARTS       torchrun restarts all of this node's processes when one dies, up to this many times
#                      (default 3); each restart resumes from the latest checkpoint (below)
#   AUTO_RESUME        auto (default): pass --trd-auto-resume when the arguments name an --experiment, so a restarted
#                      or requeued job continues from the latest complete checkpoint in <output>/<experiment>;
#                      1: always (it then needs --experiment); 0: never (a folder with checkpoints then stops the run
#                      rather than be written over)
#
# A run that can be restarted needs a fixed --experiment NAME (slurm_train.sbatch passes one per job); without one,
# train.py names a new timestamped folder at every start, and a restart trains from epoch 0 (said in one line).
# The recipes assume a global batch (batch_size x all processes); with more or fewer GPUs than a recipe's header
# assumes, pass -b to keep it (recipes/resnet50_a1_trd.yaml on 2 nodes x 8 GPUs: -b 128).
set -euo pipefail

die() { echo "train_node.sh: error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || die "usage: scripts/train_node.sh RECIPE DATA_DIR [NPROC_PER_NODE [train.py arguments ...]]"
recipe=$1
data_dir=$2
shift 2
if [[ $# -ge 1 && $1 != -* ]]; then
    nproc=$1
    shift
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nproc=$(nvidia-smi -L | grep -c '^GPU')
else
    nproc=1
fi
[[ -f $recipe ]] || die "recipe $recipe is not a file (see recipes/)"
[[ -d $data_dir ]] || die "data dir $data_dir is not a folder"
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE must be a positive whole number, got '$nproc'"

nnodes=${NNODES:-1}
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive whole number, got '$nnodes'"
max_restarts=${MAX_RESTARTS:-3}
[[ $max_restarts =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a whole number, got '$max_restarts'"
auto_resume=${AUTO_RESUME:-auto}
[[ $auto_resume == 0 || $auto_resume == 1 || $auto_resume == auto ]] \
    || die "AUTO_RESUME must be auto, 0 or 1, got '$auto_resume'"
if [[ $auto_resume == auto ]]; then
    auto_resume=0
    for arg in "$@"; do
        [[ $arg == --experiment || $arg == --experiment=* ]] && auto_resume=1
    done
    [[ $auto_resume == 1 ]] || no_experiment=1
fi
python=${PYTHON:-python3}

launch=("$python" -m torch.distributed.run --nproc_per_node "$nproc" --max-restarts "$max_restarts")
if [[ $nnodes -eq 1 ]]; then
    launch+=(--standalone)
elif [[ -n ${RDZV_ENDPOINT:-} ]]; then
    launch+=(--nnodes "$nnodes" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT"
             --rdzv-id "${RDZV_ID:-${SLURM_JOB_ID:-trd}}")
elif [[ -n ${MASTER_ADDR:-} ]]; then
    node_rank=${NODE_RANK:-${SLURM_NODEID:-}}
    [[ $node_rank =~ ^[0-9]+$ && $node_rank -lt $nnodes ]] \
        || die "NODE_RANK must be this node's number, 0 to $((nnodes - 1)), with MASTER_ADDR; got '$node_rank'"
    launch+=(--nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$MASTER_ADDR"
             --master-port "${MASTER_PORT:-29500}")
else
    die "NNODES=$nnodes needs RDZV_ENDPOINT=host:port (c10d rendezvous) or MASTER_ADDR (+ MASTER_PORT, NODE_RANK)"
fi
if [[ -n ${TORCHRUN_ARGS:-} ]]; then
    read -r -a extra_torchrun <<< "$TORCHRUN_ARGS"
    launch+=("${extra_torchrun[@]}")
fi

launch+=(-m timm_trd)
if [[ -n ${TIMM_TRAIN_SCRIPT:-} ]]; then
    launch+=(--train-script "$TIMM_TRAIN_SCRIPT")
fi
launch+=(-c "$recipe" --data-dir "$data_dir")
if [[ $auto_resume == 1 ]]; then
    launch+=(--trd-auto-resume)
fi
launch+=("$@")

if [[ -n ${no_experiment:-} ]]; then
    echo "train_node.sh: no --experiment: a restarted run trains from epoch 0 in a new folder; pass --experiment" \
         "NAME to make it resume (--trd-auto-resume)" >&2
fi
echo "train_node.sh: $nnodes node(s) x $nproc process(es), up to $max_restarts restart(s): ${launch[*]}" >&2
exec "${launch[@]}"
