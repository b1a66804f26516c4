"""scripts/slurm_train.sbatch under a real SLURM: munged, slurmctld and two slurmd on 127.0.0.1, started here.

The test writes a munge key and a slurm.conf into a fresh folder, starts munge's and SLURM's daemons in the
foreground as its own children (root only: slurmd runs the job as the submitting user and needs root for that),
submits the project's own sbatch script with ``sbatch`` and waits for the job through ``scontrol``. Two nodes on
one host: Debian's slurm-wlm (22.05) runs ``slurmd -N n1`` and ``slurmd -N n2`` side by side, each node with its
own ``Port=`` on ``NodeAddr=127.0.0.1``, so the job gets ``n[1-2]``, srun starts one task (one torchrun) on each,
and the two meet at the c10d rendezvous on the first node's NodeAddr.

There is no GPU here, so the job is submitted as a user would for a CPU trial: ``sbatch --gpus-per-node=0
--cpus-per-task=1`` overrides the script's GPU and CPU requests (one process per node when no GPU is allocated)
and ``--device cpu`` goes to train.py. The job trains with timm's real train.py and the A1 + TRD recipe (tiny
overrides, AMP off) when ``$TIMM_TRAIN_SCRIPT`` is set, with tests/mini_train.py and a tiny TRD recipe otherwise,
so CI runs it too. Everything stays on 127.0.0.1 (SLURM, munge, torchrun's --local-addr, gloo on ``lo``); every
process the test started (daemons, job steps, trainers) is gone when it ends, which the teardown checks.

Skipped, with the reason, where SLURM and munge are not installed (``apt-get install slurm-wlm munge``), where the
test is not root, or where the daemons do not start.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import MINI_TRAIN
from test_multinode import assert_same_sizes_on_both_ranks, mini_recipe
from timm_trd.data.toy_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / 'scripts' / 'slurm_train.sbatch'
NODES = ('n1', 'n2')
BINARIES = ('munged', 'slurmctld', 'slurmd', 'slurmstepd', 'sbatch', 'scontrol', 'srun', 'sinfo', 'scancel')
START_TIMEOUT = 60
JOB_TIMEOUT = 600
FINAL_STATES = {'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'PREEMPTED', 'BOOT_FAIL',
                'DEADLINE'}


def slurm_missing():
    """Why SLURM cannot run here, or None."""
    if not sys.platform.startswith('linux'):
        return 'SLURM runs on Linux only'
    missing = [b for b in BINARIES if not (shutil.which(b) or Path('/usr/sbin', b).exists())]
    if missing:
        return f'SLURM/munge not installed (missing {", ".join(missing)}): apt-get install slurm-wlm munge'
    if os.geteuid() != 0:
        return 'needs root: the test runs slurmd, which starts the job as the submitting user'
    return None


pytestmark = pytest.mark.skipif(slurm_missing() is not None, reason=str(slurm_missing()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def binary(name):
    return shutil.which(name) or str(Path('/usr/sbin', name))


def slurm_conf(root: Path) -> str:
    ctld, slurmd, *node_ports = (free_port() for _ in range(2 + len(NODES)))
    nodes = '\n'.join(f'NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs=1 RealMemory=100 '
                      'State=UNKNOWN' for name, port in zip(NODES, node_ports))
    return f"""\
ClusterName=timmtrd
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def processes_referring_to(root: Path):
    """PIDs (not this process) whose command line or environment names ``root``: what the test started."""
    mark = str(root).encode()
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / 'cmdline').read_bytes() or mark in (entry / 'environ').read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


class Cluster:
    """munged + slurmctld + one slurmd per node, all children of this process, configured under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / 'slurm.conf'
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}, 'SLURM_CONF': str(self.conf)}
        self.daemons = []

    def start(self):
        for sub in ('munge', 'state', 'log', *(f'spool/{n}' for n in NODES)):
            (self.root / sub).mkdir(parents=True)
        key = self.root / 'munge' / 'munge.key'
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(slurm_conf(self.root))
        munge = self.root / 'munge'
        self._spawn('munged', binary('munged'), '--foreground', f'--key-file={key}', f'--socket={munge}/munge.sock',
                    f'--pid-file={munge}/munged.pid', f'--log-file={munge}/munged.log', f'--seed-file={munge}/seed')
        self._wait_for(lambda: (munge / 'munge.sock').exists(), 'munged did not create its socket')
        self._spawn('slurmctld', binary('slurmctld'), '-D', '-i', '-f', str(self.conf))
        self._wait_for(lambda: self.run('sinfo', '-h', check=False).returncode == 0, 'slurmctld does not answer')
        for name in NODES:
            self._spawn(f'slurmd {name}', binary('slurmd'), '-D', '-N', name, '-f', str(self.conf))
        self._wait_for(self._nodes_idle, f'nodes {", ".join(NODES)} did not come up idle')

    def _spawn(self, name, *cmd):
        log = open(self.root / 'log' / f'{name.replace(" ", "-")}.out', 'w')
        self.daemons.append((name, subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)))
        log.close()

    def _wait_for(self, ready, what):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            dead = [name for name, proc in self.daemons if proc.poll() is not None]
            if dead:
                raise RuntimeError(f'{", ".join(dead)} exited while starting: {self.log_tail()}')
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f'{what} within {START_TIMEOUT} s: {self.log_tail()}')

    def _nodes_idle(self):
        out = self.run('sinfo', '-h', '-N', '-o', '%N %T', check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == 'idle' for n in NODES)

    def run(self, *cmd, check=True, timeout=30, **kwargs):
        return subprocess.run(cmd, env=kwargs.pop('env', self.env), capture_output=True, text=True, timeout=timeout,
                              check=check, **kwargs)

    def log_tail(self, lines=8):
        tails = []
        for path in sorted(self.root.glob('log/*')) + [self.root / 'munge' / 'munged.log']:
            if path.is_file() and path.stat().st_size:
                tails.append(f'[{path.name}] ' + ' | '.join(path.read_text(errors='replace').splitlines()[-lines:]))
        return ' ;; '.join(tails)

    def job_state(self, job_id):
        line = self.run('scontrol', '-o', 'show', 'job', job_id).stdout
        fields = dict(re.findall(r'(\w+)=(\S*)', line))
        return fields.get('JobState'), fields.get('ExitCode'), fields.get('NodeList')

    def stop(self):
        """Cancel what still runs, stop the daemons (TERM, then KILL), then end any process left behind."""
        if any(proc.poll() is None for name, proc in self.daemons if name == 'slurmctld'):
            self.run('scancel', '--quiet', '--full', '--partition=debug', check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run('squeue', '-h', check=False).stdout.strip():
                time.sleep(0.5)
        for name, proc in reversed(self.daemons):  # the slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        left = processes_referring_to(self.root)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture(scope='module')
def cluster():
    # not pytest's tmp_path: munged wants every folder above its socket to be searchable by all (pytest's are 0700)
    root = Path(tempfile.mkdtemp(prefix='timm-trd-slurm-', dir='/tmp'))
    root.chmod(0o755)
    cluster = Cluster(root)
    started = time.monotonic()
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f'SLURM did not start here: {error}')
    cluster.start_s = time.monotonic() - started
    yield cluster
    left = cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f'processes left behind by the SLURM test (now killed): {left}'


def job_environment(cluster, train_script):
    env = {k: v for k, v in cluster.env.items()
           if k not in ('NNODES', 'NODE_RANK', 'RDZV_ENDPOINT', 'RDZV_ID', 'MASTER_ADDR', 'MASTER_PORT', 'NPROC_PER_NODE')}
    env.update(TIMM_TRAIN_SCRIPT=str(train_script), PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PYTHONWARNINGS='ignore', RDZV_PORT=str(free_port()), TORCHRUN_ARGS='--local-addr 127.0.0.1',
               GLOO_SOCKET_IFNAME='lo')
    return env


def submit(cluster, env, log_dir, recipe, data, *train_args, sbatch_args=('--time=15',)):
    submitted = cluster.run(
        'sbatch', '--parsable', '--nodes=2', '--gpus-per-node=0', '--cpus-per-task=1', *sbatch_args,
        f'--output={log_dir}/slurm-%j.out', str(SBATCH), str(recipe), str(data), *train_args, cwd=REPO, env=env)
    return submitted.stdout.strip().split(';')[0]


def submit_and_wait(cluster, env, log_dir, recipe, data, *train_args, job_id=None, during=None):
    """sbatch the project's script as a CPU user would (or follow ``job_id``); wait for the job to end, calling
    ``during(job_id)`` every second until it returns True; its state, nodes and log."""
    job_id = job_id or submit(cluster, env, log_dir, recipe, data, *train_args)
    deadline, started = time.monotonic() + JOB_TIMEOUT, time.monotonic()
    state = None
    while time.monotonic() < deadline:
        if during is not None and during(job_id):
            during = None
        state, exit_code, nodes = cluster.job_state(job_id)
        if state in FINAL_STATES:
            break
        time.sleep(1)
    else:
        cluster.run('scancel', job_id, check=False)
    log_path = log_dir / f'slurm-{job_id}.out'
    log = log_path.read_text() if log_path.exists() else ''
    assert state in FINAL_STATES, f'job {job_id} still {state} after {JOB_TIMEOUT} s (cancelled): {log[-3000:]}'
    return job_id, state, exit_code, nodes, log, time.monotonic() - started


def test_sbatch_script_trains_with_trd_on_two_slurm_nodes(cluster, image_folder, tmp_path):
    real = os.environ.get('TIMM_TRAIN_SCRIPT')
    if real:
        train_script = Path(real)
        data = make_image_folder(tmp_path / 'images', size=64, train_per_class=16, val_per_class=4)
        a1 = yaml.safe_load((REPO / 'recipes' / 'resnet50_a1_trd.yaml').read_text())
        recipe = tmp_path / 'a1_trd_cpu.yaml'
        recipe.write_text(yaml.safe_dump({**a1, 'amp': False}))  # AMP on a CPU is ~10x slower; see test_recipes
        args = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--trd-size', '32', '--epochs', '1',
                '-b', '8', '--workers', '1', '--device', 'cpu', '--log-interval', '100',
                '--output', str(tmp_path), '--experiment', 'slurm']
        reduced, batches = 2, 4  # 64 images, 2 ranks, batches of 8; P 0.5
    else:
        train_script, data, recipe = MINI_TRAIN, image_folder, mini_recipe(tmp_path)
        args = ['--workers', '1', '--result-dir', str(tmp_path), '--log-info']
        reduced, batches = 3, 6  # 96 images, 2 ranks, batches of 8; P 0.5
    env = job_environment(cluster, train_script)
    job_id, state, exit_code, nodes, log, job_s = submit_and_wait(cluster, env, tmp_path, recipe, data, *args)
    print(f'SLURM: daemons up in {cluster.start_s:.1f} s; job {job_id} ({train_script.name}) {state} in {job_s:.1f} s')
    assert (state, exit_code) == ('COMPLETED', '0:0'), log[-4000:]
    assert nodes == 'n[1-2]'
    port = env['RDZV_PORT']
    assert (f'slurm_train.sbatch: job {job_id} (start 1), 2 node(s) (n[1-2]) x 1 process(es) (GPUs per node: 0), '
            f'rendezvous at 127.0.0.1:{port}') in log
    assert log.count('train_node.sh: 2 node(s) x 1 process(es)') == 2  # one torchrun per node, from srun
    assert log.count(f'--rdzv-endpoint 127.0.0.1:{port} --rdzv-id {job_id}') == 2
    epoch = [line.strip() for line in log.splitlines() if 'TRD: epoch 0:' in line]
    assert len(epoch) == 1, log[-4000:]  # rank 0 logs it, on whichever node the rendezvous made rank 0
    assert f'TRD: epoch 0: {reduced}/{batches} batches at' in epoch[0]
    assert epoch[0].endswith('all 2 ranks served the same sizes in the same order')
    if real:
        assert 'Training in distributed mode' in log and (tmp_path / 'slurm' / 'summary.csv').is_file()
    else:
        assert_same_sizes_on_both_ranks(tmp_path)


def restart_run(tmp_path, image_folder):
    """The SLURM restart tests' run: tests/mini_train.py, 2 nodes x 1 process, 4 epochs slowed to a few seconds each,
    into the folder the job names itself (<output>/timm-trd-<job id>); and the same run uninterrupted, under
    torchrun on this machine (2 processes: the same plan and batches), for the TRD columns."""
    recipe = mini_recipe(tmp_path)
    args = ['--epochs', '4', '--seed', '3', '--workers', '0', '--log-info', '--output', str(tmp_path / 'runs')]
    whole = subprocess.run(['bash', str(REPO / 'scripts' / 'train_node.sh'), str(recipe), str(image_folder), '2',
                            *args, '--experiment', 'whole'], capture_output=True, text=True, timeout=600,
                           env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable,
                                'TIMM_TRAIN_SCRIPT': str(MINI_TRAIN), 'PYTHONWARNINGS': 'ignore'})
    assert whole.returncode == 0, whole.stderr[-3000:]
    return recipe, args + ['--step-sleep', '0.8']


def assert_one_run(tmp_path, job_id, log):
    from test_autoresume import EPOCHS, assert_continued_as_one_run
    assert EPOCHS == 4
    folder = tmp_path / 'runs' / f'timm-trd-{job_id}'
    assert_continued_as_one_run(folder, tmp_path / 'runs' / 'whole', higher_is_better=False)
    resumed = [line for line in log.splitlines() if 'TRD: auto-resume: continuing from' in line]
    assert len(resumed) == 1 and str(folder) in resumed[0], log[-4000:]
    return resumed[0]


def test_a_requeued_job_resumes_where_it_stopped_and_completes(cluster, image_folder, tmp_path):
    recipe, args = restart_run(tmp_path, image_folder)
    env = job_environment(cluster, MINI_TRAIN)
    requeued = []

    def requeue_after_epoch_1(job_id):
        if (tmp_path / 'runs' / f'timm-trd-{job_id}' / 'checkpoint-1.pth.tar').exists():
            cluster.run('scontrol', 'requeue', job_id)
            requeued.append(time.monotonic())
            return True
        return False

    job_id, state, exit_code, _, log, job_s = submit_and_wait(cluster, env, tmp_path, recipe, image_folder, *args,
                                                              during=requeue_after_epoch_1)
    restarts = re.search(r'Restarts=(\d+)', cluster.run('scontrol', '-o', 'show', 'job', job_id).stdout).group(1)
    print(f'SLURM: job {job_id} requeued after epoch 1, {state} in {job_s:.1f} s, Restarts={restarts}')
    assert (state, exit_code, restarts) == ('COMPLETED', '0:0', '1'), log[-4000:]
    assert requeued and f'slurm_train.sbatch: job {job_id} (start 2)' in log
    line = assert_one_run(tmp_path, job_id, log)
    assert 'training goes on at epoch 2' in line or 'training goes on at epoch 3' in line, line
    print(line)


def test_a_job_at_its_time_limit_requeues_itself_and_resumes(cluster, image_folder, tmp_path):
    """--time=2 with --signal=B:USR1@40: slurmctld signals the script 50-80 s in (from 30 s before the asked time on,
    checking every 30 s), after epoch 0 and before epoch 3 (24 s each); the trap requeues the job; once it is requeued
    the test lifts the limit (a fresh start would be signalled again)."""
    recipe, args = restart_run(tmp_path, image_folder)
    env = job_environment(cluster, MINI_TRAIN)
    job_id = submit(cluster, env, tmp_path, recipe, image_folder, *args,
                    '--step-sleep', '4', sbatch_args=('--time=2', '--signal=B:USR1@40'))

    def lift_the_limit_once_requeued(job_id):
        fields = cluster.run('scontrol', '-o', 'show', 'job', job_id).stdout
        if re.search(r'Restarts=[1-9]', fields):
            cluster.run('scontrol', 'update', f'JobId={job_id}', 'TimeLimit=15')
            return True
        return False

    job_id, state, exit_code, _, log, job_s = submit_and_wait(cluster, env, tmp_path, recipe, image_folder,
                                                              job_id=job_id, during=lift_the_limit_once_requeued)
    print(f'SLURM: job {job_id} signalled at its time limit, {state} in {job_s:.1f} s')
    assert (state, exit_code) == ('COMPLETED', '0:0'), log[-4000:]
    assert f'slurm_train.sbatch: job {job_id} is near its time limit (USR1): requeued' in log
    assert f'slurm_train.sbatch: job {job_id} (start 2)' in log
    print(assert_one_run(tmp_path, job_id, log))
