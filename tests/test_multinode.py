"""Two nodes on one machine: two torchrun launchers (scripts/train_node.sh), one process each, gloo on the CPU.

Both nodes must train the same sizes in the same order. tests/mini_train.py (train.py's seams, real timm
data code) runs without a checkout of train.py, so CI exercises the rendezvous; with $TIMM_TRAIN_SCRIPT the
same run goes through timm's train.py. The SLURM example runs too, with stand-ins for srun and scontrol.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MINI_TRAIN
from timm_trd import TRDSchedule

REPO = Path(__file__).resolve().parents[1]
TRAIN_NODE = REPO / 'scripts' / 'train_node.sh'
SBATCH = REPO / 'scripts' / 'slurm_train.sbatch'
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def base_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('NNODES', 'NODE_RANK', 'RDZV_ENDPOINT', 'RDZV_ID', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHRUN_ARGS')}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', PYTHON=sys.executable, **extra)
    return env


def run_together(commands):
    """Start every (cmd, env) at once, wait for all; on a timeout kill the process groups started here."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for cmd, env in commands]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        raise
    return [proc.returncode for proc in procs], logs


def node_commands(recipe, data_dir, extra, train_script, rendezvous):
    """The two launchers' commands: the same except NODE_RANK (static rendezvous only)."""
    port = free_port()
    common = dict(NNODES='2', TIMM_TRAIN_SCRIPT=str(train_script))
    if rendezvous == 'c10d':
        envs = [base_env(**common, RDZV_ENDPOINT=f'127.0.0.1:{port}', RDZV_ID=f'trd-test-{port}')] * 2
    else:
        envs = [base_env(**common, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), NODE_RANK=str(rank)) for rank in (0, 1)]
    cmd = ['bash', str(TRAIN_NODE), str(recipe), str(data_dir), '1', *extra]
    return [(cmd, env) for env in envs]


def mini_recipe(tmp_path):
    recipe = tmp_path / 'mini_trd.yaml'
    recipe.write_text(yaml.safe_dump({'trd_prob': 0.5, 'trd_size': 24, 'img_size': 40, 'epochs': 1, 'batch_size': 8}))
    return recipe


def assert_same_sizes_on_both_ranks(result_dir):
    runs = [json.loads((result_dir / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    sizes = [[tuple(shape[2:]) for shape in r['shapes']['0']] for r in runs]
    assert sizes[0] == sizes[1]
    batches = (4 * 24 // 2) // 8  # 96 images, half to each node, batches of 8
    plan = TRDSchedule(prob=0.5, total_epochs=1, seed=42).plan(0, batches)
    assert sizes[0] == [(24, 24) if reduced else (40, 40) for reduced in plan]
    assert [r['epochs'][0]['trd_reduced_batches'] for r in runs] == [3, 3]


@pytest.mark.parametrize('rendezvous', ['c10d', 'static'])
def test_two_nodes_one_process_each_mini_train(image_folder, tmp_path, rendezvous):
    commands = node_commands(mini_recipe(tmp_path), image_folder, ['--workers', '1', '--result-dir', str(tmp_path)],
                             MINI_TRAIN, rendezvous)
    codes, logs = run_together(commands)
    assert codes == [0, 0], '\n=====\n'.join(log[-3000:] for log in logs)
    for log in logs:
        if rendezvous == 'c10d':
            assert f'--nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:' in log
        else:
            assert '--nnodes 2 --node-rank' in log
    assert_same_sizes_on_both_ranks(tmp_path)


def test_two_nodes_one_process_each_train_py(train_script, tmp_path):
    from timm_trd.data.toy_data import make_image_folder
    data = make_image_folder(tmp_path / 'images', size=64, train_per_class=16, val_per_class=4)
    recipe = tmp_path / 'trd.yaml'
    recipe.write_text(yaml.safe_dump({'trd_prob': 0.5, 'trd_size': 32}))
    extra = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--epochs', '1', '-b', '8',
             '--workers', '1', '--device', 'cpu', '--output', str(tmp_path), '--experiment', 'two-nodes']
    codes, logs = run_together(node_commands(recipe, data, extra, train_script, 'c10d'))
    assert codes == [0, 0], '\n=====\n'.join(log[-3000:] for log in logs)
    both = '\n'.join(logs)
    assert both.count('Training in distributed mode') == 2 and both.count('total 2') == 2
    # rank 0 (on whichever node the rendezvous made first) compares both ranks' sequences of sizes
    line = [l for l in both.splitlines() if l.startswith('TRD: epoch 0:')]
    assert len(line) == 1 and line[0].startswith('TRD: epoch 0: 2/4 batches at 32x32')
    assert line[0].endswith('all 2 ranks served the same sizes in the same order')
    assert (tmp_path / 'two-nodes' / 'summary.csv').is_file()


def test_slurm_example_launches_one_torchrun_per_node(image_folder, tmp_path):
    """scripts/slurm_train.sbatch with stand-ins: scontrol names the head node, srun starts one task per node."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text('#!/usr/bin/env bash\necho 127.0.0.1\necho node-b\n')
    (bin_dir / 'srun').write_text(
        '#!/usr/bin/env bash\n'
        '# stand-in: drop srun options, run the command once per node, like srun --ntasks-per-node=1\n'
        'while [[ $1 == -* ]]; do shift; done\n'
        'for node in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do SLURM_NODEID=$node SLURM_PROCID=$node "$@" & done\n'
        'status=0; for job in $(jobs -p); do wait $job || status=$?; done; exit $status\n')
    for tool in ('scontrol', 'srun'):
        (bin_dir / tool).chmod(0o755)
    env = base_env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', TIMM_TRAIN_SCRIPT=str(MINI_TRAIN),
                   SLURM_JOB_NODELIST='fake[1-2]', SLURM_JOB_NUM_NODES='2', SLURM_JOB_ID=str(free_port()),
                   SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE='1', RDZV_PORT=str(free_port()))
    cmd = ['bash', str(SBATCH), str(mini_recipe(tmp_path)), str(image_folder), '--workers', '1', '--result-dir', str(tmp_path)]
    codes, logs = run_together([(cmd, env)])
    assert codes == [0], logs[0][-3000:]
    assert logs[0].count('--rdzv-endpoint 127.0.0.1:') == 2  # one torchrun per node, both at the head node
    assert_same_sizes_on_both_ranks(tmp_path)


@pytest.mark.parametrize('env,args,message', [
    ({}, ['missing.yaml', '.'], 'recipe missing.yaml is not a file'),
    ({}, ['RECIPE', 'no-such-dir'], 'data dir no-such-dir is not a folder'),
    ({}, ['RECIPE', '.', 'two'], "NPROC_PER_NODE must be a positive whole number, got 'two'"),
    ({'NNODES': '2'}, ['RECIPE', '.', '1'], 'NNODES=2 needs RDZV_ENDPOINT=host:port'),
    ({'NNODES': '2', 'MASTER_ADDR': '127.0.0.1', 'NODE_RANK': '2'}, ['RECIPE', '.', '1'], 'NODE_RANK must be'),
])
def test_launch_script_rejects_bad_input(tmp_path, env, args, message):
    recipe = mini_recipe(tmp_path)
    args = [str(recipe) if a == 'RECIPE' else a for a in args]
    result = subprocess.run(['bash', str(TRAIN_NODE), *args], capture_output=True, text=True, timeout=60,
                            env=base_env(**env), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith('train_node.sh: error: ') and message in result.stderr
