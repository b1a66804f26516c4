"""A restarted job continues its run (``--trd-auto-resume``), and a run never writes over its own checkpoints.

The jobs here stop the way clusters stop them: a process SIGKILLed mid-epoch (``mini_train.py --die-at``, or from
outside for timm's train.py), torchrun restarting every rank when one dies (``scripts/train_node.sh``), a checkpoint
cut off while it was written. The restarted job is the same command line. Each test checks what the issue asks:
every epoch's summary.csv row once under one header, the TRD columns of an uninterrupted run with the same seed,
``model_best.pth.tar`` the best epoch of the whole run, and the line that says where the run resumed. tests/test_slurm.py
does the same under a real SLURM (``scontrol requeue``, the time-limit signal).
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MINI_TRAIN, train_script_or_skip
from timm_trd.plugin.autoresume import WANDB_ID_FILE, find_latest, wandb_run_id
from timm_trd.plugin.resume import read_checkpoint

REPO = Path(__file__).resolve().parent.parent
TRAIN_NODE = REPO / 'scripts' / 'train_node.sh'
TRD_COLUMNS = ('train_trd_reduced_batches', 'train_trd_batches', 'train_trd_compute')
EPOCHS = 4


def env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}


def launch(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'timm_trd', *args], capture_output=True, text=True, timeout=timeout,
                          env=env())


def mini_args(data, out, experiment, *extra):
    return ['--train-script', str(MINI_TRAIN), '--data-dir', str(data), '--img-size', '40', '--trd-size', '24',
            '--trd-prob', '0.5', '--trd-mode', 'device', '--epochs', str(EPOCHS), '-b', '8', '--seed', '3',
            '--output', str(out), '--experiment', experiment, '--log-info', *extra]


def summary(folder: Path):
    text = (folder / 'summary.csv').read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return rows, sum(1 for line in text.splitlines() if line.startswith('epoch,'))


def assert_continued_as_one_run(folder: Path, whole: Path, higher_is_better=True, metric='train_loss'):
    """summary.csv: every epoch once, one header, the TRD columns of the uninterrupted run; model_best: the best."""
    rows, headers = summary(folder)
    reference, _ = summary(whole)
    assert headers == 1, (folder / 'summary.csv').read_text()
    assert [int(r['epoch']) for r in rows] == list(range(EPOCHS))
    for row, ref in zip(rows, reference):
        assert {c: row[c] for c in TRD_COLUMNS} == {c: ref[c] for c in TRD_COLUMNS}
        assert float(row['train_trd_saved_cum']) == pytest.approx(float(ref['train_trd_saved_cum']), abs=2e-6)
    values = [float(r[metric]) for r in rows]
    best_epoch = max(range(EPOCHS), key=lambda e: values[e] if higher_is_better else -values[e])
    assert int(read_checkpoint(folder / 'model_best.pth.tar')['epoch']) == best_epoch, values


def test_a_killed_run_started_again_continues_from_its_last_checkpoint(image_folder, tmp_path):
    whole = launch(*mini_args(image_folder, tmp_path, 'whole', '--trd-auto-resume'))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert 'TRD: auto-resume: no complete checkpoint in' in whole.stderr

    marker = tmp_path / 'killed'
    args = mini_args(image_folder, tmp_path, 'cut', '--trd-auto-resume', '--die-at', f'2:0:3:{marker}')
    first = launch(*args)
    assert first.returncode == -signal.SIGKILL and marker.exists(), first.stderr[-3000:]
    again = launch(*args)  # the same command line, as SLURM's requeue or a user would run it
    assert again.returncode == 0, again.stderr[-3000:]
    folder = tmp_path / 'cut'
    assert f'TRD: auto-resume: continuing from {folder / "last.pth.tar"} (epoch 1); training goes on at epoch 2' \
        in again.stderr
    assert 'checkpoint history restored (2 files)' in again.stderr
    assert_continued_as_one_run(folder, tmp_path / 'whole', higher_is_better=False)


def test_the_same_command_twice_into_one_folder_is_refused_before_it_writes(image_folder, tmp_path):
    for prob in ('0.5', '0'):
        args = mini_args(image_folder, tmp_path, f'p{prob}', '--trd-prob', prob)
        assert launch(*args).returncode == 0
        folder = tmp_path / f'p{prob}'
        before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
        again = launch(*args)
        assert again.returncode == 2
        lines = again.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'timm-trd: error: {folder} already holds checkpoints'), lines
        assert '--trd-auto-resume' in lines[0] and 'another --experiment' in lines[0]
        assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before


def test_train_py_refuses_the_same_command_twice_into_one_folder(image_folder, tmp_path):
    train_script = train_script_or_skip()
    args = ['--train-script', str(train_script), '--data-dir', str(image_folder),
            *[a for a in TRAIN_PY_ARGS if a != '--trd-auto-resume'], '--epochs', '1', '--output', str(tmp_path),
            '--experiment', 'twice']
    assert launch(*args, timeout=600).returncode == 0
    folder = tmp_path / 'twice'
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = launch(*args, timeout=600)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'timm-trd: error: {folder} already holds checkpoints'), lines
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_auto_resume_without_an_experiment_is_one_line(image_folder, tmp_path):
    args = [a for a in mini_args(image_folder, tmp_path, 'x', '--trd-auto-resume') if a not in ('--experiment', 'x')]
    done = launch(*args)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        'timm-trd: error: --trd-auto-resume needs --experiment NAME: the folder a restarted job finds its checkpoints '
        'in (without it train.py names a new, timestamped folder at every start)']


def test_a_checkpoint_cut_off_mid_write_is_skipped_and_named(image_folder, tmp_path):
    marker = tmp_path / 'killed'
    args = mini_args(image_folder, tmp_path, 'cut', '--trd-auto-resume', '--die-at', f'2:0:0:{marker}')
    assert launch(*args).returncode == -signal.SIGKILL
    folder = tmp_path / 'cut'
    last = folder / 'last.pth.tar'
    data = last.read_bytes()
    partial = folder / 'partial'  # a new file: last.pth.tar is a hard link of checkpoint-1.pth.tar, which stays whole
    partial.write_bytes(data[:len(data) // 2])
    os.replace(partial, last)
    latest, skipped = find_latest(folder)
    assert latest.path.name == 'checkpoint-1.pth.tar' and latest.epoch == 1
    assert len(skipped) == 1 and skipped[0].startswith('last.pth.tar (')
    again = launch(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'TRD: auto-resume skipped last.pth.tar (' in again.stderr
    assert f'continuing from {folder / "checkpoint-1.pth.tar"} (epoch 1); training goes on at epoch 2' in again.stderr
    rows, headers = summary(folder)
    assert headers == 1 and [int(r['epoch']) for r in rows] == list(range(EPOCHS))


def test_a_recovery_checkpoint_resumes_at_the_next_epoch_and_counts_what_was_served(image_folder, tmp_path):
    marker = tmp_path / 'killed'
    args = mini_args(image_folder, tmp_path, 'rec', '--trd-auto-resume', '--recovery-interval', '2',
                     '--die-at', f'1:0:5:{marker}')
    assert launch(*args).returncode == -signal.SIGKILL
    folder = tmp_path / 'rec'
    latest, _ = find_latest(folder)
    assert (latest.path.name, latest.epoch, latest.batch) == ('recovery-1-5.pth.tar', 1, 5)
    again = launch(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'continuing from' in again.stderr and '(epoch 1, update 5 (a recovery checkpoint))' in again.stderr
    assert 'is a recovery checkpoint of epoch 1, written after 50% of its batches; timm goes on at epoch 2, so the ' \
           'rest of epoch 1 is not trained' in again.stderr
    rows, headers = summary(folder)
    assert headers == 1 and [int(r['epoch']) for r in rows] == [0, 2, 3]  # epoch 1 never finished
    # the saved share counts epoch 1 by the 6 of its 12 batches that ran: weight 0.5
    last = read_checkpoint(folder / 'last.pth.tar')['args']
    partial = last.trd_served_partial[1]
    shares = [(float(rows[0]['train_trd_compute']), 1.0), tuple(partial), (float(rows[1]['train_trd_compute']), 1.0),
              (float(rows[2]['train_trd_compute']), 1.0)]
    assert partial[1] == pytest.approx(0.5)
    expected = 1 - sum(s * w for s, w in shares) / sum(w for _, w in shares)
    assert float(rows[2]['train_trd_saved_cum']) == pytest.approx(expected, abs=2e-6)


def test_torchrun_restarts_both_ranks_when_one_is_killed_and_they_resume(image_folder, tmp_path):
    recipe = tmp_path / 'mini.yaml'
    recipe.write_text('trd_prob: 0.5\ntrd_size: 24\nimg_size: 40\nbatch_size: 8\ntrd_mode: device\n')
    marker = tmp_path / 'killed'
    common = ['--epochs', str(EPOCHS), '--seed', '3', '--output', str(tmp_path), '--log-info', '--workers', '0']
    runs = {}
    for name, extra in (('whole', []), ('cut', ['--die-at', f'2:1:1:{marker}'])):
        runs[name] = subprocess.run(
            ['bash', str(TRAIN_NODE), str(recipe), str(image_folder), '2', *common, '--experiment', name, *extra],
            capture_output=True, text=True, timeout=600,
            env={**env(), 'PYTHON': sys.executable, 'TIMM_TRAIN_SCRIPT': str(MINI_TRAIN), 'MAX_RESTARTS': '1'})
        assert runs[name].returncode == 0, runs[name].stderr[-4000:]
    log = runs['cut'].stderr
    assert marker.read_text() == 'killed rank 1 after step 1 of epoch 2\n'
    assert '--max-restarts 1' in log and '--trd-auto-resume' in log
    assert f'TRD: auto-resume: continuing from {tmp_path / "cut" / "last.pth.tar"} (epoch 1); training goes on at ' \
           f'epoch 2' in log
    assert_continued_as_one_run(tmp_path / 'cut', tmp_path / 'whole', higher_is_better=False)


def test_the_wandb_run_id_is_kept_in_the_folder_and_used_again(tmp_path):
    first = wandb_run_id(tmp_path, {'project': 'p'})
    assert first['resume'] == 'allow' and len(first['id']) == 8
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first['id']
    assert wandb_run_id(tmp_path, {'project': 'p'}) == first  # the restarted job: the same run
    assert wandb_run_id(tmp_path, {'id': 'mine'}) == {'id': 'mine'}  # --wandb-resume-id wins


TRAIN_PY_ARGS = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '40', '--trd-size', '24',
                 '--trd-prob', '0.5', '--epochs', str(EPOCHS), '-b', '8', '--workers', '0', '--device', 'cpu',
                 '--seed', '3', '--log-interval', '100', '--trd-auto-resume']


def test_train_py_killed_and_started_again_continues_as_one_run(image_folder, tmp_path):
    """timm's train.py ($TIMM_TRAIN_SCRIPT or the cached copy): killed from outside once its epoch-1 checkpoint is
    written, then the same command line."""
    train_script = train_script_or_skip()
    common = ['--train-script', str(train_script), '--data-dir', str(image_folder), *TRAIN_PY_ARGS,
              '--output', str(tmp_path)]
    whole = launch(*common, '--experiment', 'whole', timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    folder = tmp_path / 'cut'
    cmd = [sys.executable, '-m', 'timm_trd', *common, '--experiment', 'cut']
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not (folder / 'checkpoint-1.pth.tar').exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    rows, _ = summary(folder)
    assert len(rows) < EPOCHS, 'the run ended before it could be stopped'
    again = launch(*cmd[3:], timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'TRD: auto-resume: continuing from' in again.stderr
    assert_continued_as_one_run(folder, tmp_path / 'whole', higher_is_better=True, metric='eval_top1')


def rank_processes(root_pid: int):
    """The trainer processes below ``root_pid`` by their RANK (read from /proc)."""
    ranks, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
            environ = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        except OSError:
            continue
        todo += [int(c) for c in children]
        env_vars = dict(v.split(b'=', 1) for v in environ if b'=' in v)
        if b'RANK' in env_vars and b'TORCHELASTIC_RUN_ID' in env_vars and pid != root_pid:
            cmdline = Path(f'/proc/{pid}/cmdline').read_bytes()
            if b'timm_trd' in cmdline and b'torch.distributed.run' not in cmdline:
                ranks.setdefault(int(env_vars[b'RANK']), pid)
    return ranks


def test_train_py_under_torchrun_restarts_when_a_rank_is_killed(image_folder, tmp_path):
    """timm's train.py, 2 processes through scripts/train_node.sh with MAX_RESTARTS=1: rank 1 SIGKILLed from outside
    once the epoch-1 checkpoint is there; torchrun restarts both and they resume."""
    train_script = train_script_or_skip()
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('trd_prob: 0.5\n')
    args = [a for a in TRAIN_PY_ARGS if a not in ('--trd-auto-resume',)] + ['--output', str(tmp_path)]
    node_env = {**env(), 'PYTHON': sys.executable, 'TIMM_TRAIN_SCRIPT': str(train_script), 'MAX_RESTARTS': '1'}
    node = ['bash', str(TRAIN_NODE), str(recipe), str(image_folder), '2', *args]
    whole = subprocess.run([*node, '--experiment', 'whole'], capture_output=True, text=True, timeout=600, env=node_env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    folder = tmp_path / 'cut'
    log = tmp_path / 'cut.log'
    with open(log, 'w') as out:
        process = subprocess.Popen([*node, '--experiment', 'cut'], stdout=out, stderr=subprocess.STDOUT, env=node_env,
                                   start_new_session=True)
        deadline, killed = time.monotonic() + 300, None
        while process.poll() is None and time.monotonic() < deadline:
            if killed is None and (folder / 'checkpoint-1.pth.tar').exists():
                rank1 = rank_processes(process.pid).get(1)
                if rank1:
                    os.kill(rank1, signal.SIGKILL)
                    killed = rank1
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait(timeout=60)
    text = log.read_text()
    assert killed is not None and code == 0, text[-4000:]
    resumed = [line for line in text.splitlines() if 'TRD: auto-resume: continuing from' in line]
    assert len(resumed) == 1, text[-4000:]
    assert_continued_as_one_run(folder, tmp_path / 'whole', higher_is_better=True, metric='eval_top1')


def test_on_a_timm_without_trim_summary_or_saver_state_the_fallbacks_do_the_same(tmp_path, monkeypatch):
    """timm < 1.0.31 has neither ``utils.trim_summary`` nor ``CheckpointSaver.load_state_dict_from_checkpoint``:
    taken away here, the plugin's own summary trim and history restore give what timm's give."""
    import timm.utils
    import torch
    from timm.utils import CheckpointSaver
    from timm_trd.plugin.autoresume import Continuation

    rows = 'epoch,train_loss\r\n0,1.5\r\n1,1.2\r\n2,1.4\r\n'
    for name in ('timm', 'own'):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'summary.csv').write_text(rows)
    Continuation.trim_summary(str(tmp_path / 'timm' / 'summary.csv'), 2)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(model, optimizer, checkpoint_dir=str(tmp_path), max_history=2)
    for epoch, metric in enumerate((0.5, 0.9, 0.7)):
        saver.save_checkpoint(epoch, metric=metric)
    timm_saver = CheckpointSaver(model, optimizer, checkpoint_dir=str(tmp_path), max_history=2)
    Continuation(tmp_path, tmp_path / 'last.pth.tar').restore_saver(timm_saver)

    monkeypatch.delattr(timm.utils, 'trim_summary')
    monkeypatch.delattr(CheckpointSaver, 'load_state_dict_from_checkpoint')
    Continuation.trim_summary(str(tmp_path / 'own' / 'summary.csv'), 2)
    assert (tmp_path / 'own' / 'summary.csv').read_text().splitlines() == \
        (tmp_path / 'timm' / 'summary.csv').read_text().splitlines() == ['epoch,train_loss', '0,1.5', '1,1.2']
    own_saver = CheckpointSaver(model, optimizer, checkpoint_dir=str(tmp_path), max_history=2)
    Continuation(tmp_path, tmp_path / 'last.pth.tar').restore_saver(own_saver)
    assert own_saver.checkpoint_files == timm_saver.checkpoint_files == [
        (str(tmp_path / 'checkpoint-1.pth.tar'), 0.9), (str(tmp_path / 'checkpoint-2.pth.tar'), 0.7)]
    assert (own_saver.best_metric, own_saver.best_epoch) == (timm_saver.best_metric, timm_saver.best_epoch) == (0.9, 1)
