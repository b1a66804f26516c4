"""scripts/gpu_check.sh keeps working: its CPU dry run goes through every phase a GPU machine runs.

The benchmark and compile phases always run (generated images, no network); the train.py phases need a
train.py (found as timm-trd-train finds it, see conftest.py) and are skipped with that reason otherwise.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import found_train_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'gpu_check.sh'


def load_gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', ROOT / 'scripts' / 'gpu_check.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """One dry run for the whole module: every phase, the train.py ones only where a train.py is found."""
    base = tmp_path_factory.mktemp('gpu_check')
    phases = ['setup', 'bench-compute', 'bench-loader', 'compile']
    extra = []
    train_py = found_train_script()
    if train_py:
        phases[1:1] = ['trainpy-loader', 'trainpy-device']
        extra = ['--train-script', str(train_py)]
    env = {**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    env.pop('OUT', None)
    result = subprocess.run(['bash', str(SCRIPT), '--dry-run', '--out', str(base / 'out'), '--work', str(base / 'work'),
                             '--phases', *phases, *extra], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out = base / 'out'
    return dict(out=out, stdout=result.stdout, json=json.loads((out / 'gpu_check.json').read_text()),
                table=(out / 'gpu_check.txt').read_text())


def test_results_fit_what_the_device_tool_brings_back(dry_run):
    files = sorted(p.name for p in dry_run['out'].iterdir())
    assert files == ['gpu_check.json', 'gpu_check.txt', 'gpu_check_logs.tar.gz']  # at most 8 files, plain names
    with tarfile.open(dry_run['out'] / 'gpu_check_logs.tar.gz') as tar:
        names = tar.getnames()
    assert {'logs/setup.log', 'logs/bench-compute.log', 'logs/bench-loader.log', 'logs/compile.log',
            'bench_compute.json', 'bench_loader.json', 'bench_compile.json'} <= set(names)
    result = dry_run['json']
    assert result['mode'] == 'dry-run' and result['finished'] is True
    assert result['seconds'] < result['deadline_s']
    # the table is printed last, so it ends the device tool's output tail
    assert dry_run['stdout'].rstrip().splitlines()[-1].startswith('wrote ')
    assert dry_run['table'].strip() in dry_run['stdout']


def test_benchmark_phases_report_ratio_ideal_and_data_wait(dry_run):
    result = dry_run['json']
    assert result['environment']['loader_path_unavailable'] is None  # timm >= 1.0.29 (setup.cfg asks for more)
    for phase in ('setup', 'bench-compute', 'bench-loader', 'compile'):
        assert result['phases'][phase]['status'] == 'ok', result['phases'][phase]
    for phase in ('bench-compute', 'bench-loader'):
        configs = result['phases'][phase]['configs']
        assert list(configs) == ['baseline', 'loader', 'device']
        assert configs['baseline']['reduced'] == 0 and configs['baseline']['ratio'] == 1
        for path in ('loader', 'device'):
            c = configs[path]
            # one timed epoch of 2 batches: exactly one at 16x16, against the ideal 1 - 0.5 (1 - 1/4)
            assert (c['reduced'], c['steps']) == (1, 2)
            assert c['ideal'] == pytest.approx(0.625)
            assert c['ratio'] > 0 and c['ratio_over_ideal'] == pytest.approx(c['ratio'] / 0.625)
            assert c['step_ms_full'] > 0 and c['step_ms_reduced'] > 0
            assert c['data_ms_per_reduced'] is not None
    checks = result['phases']['compile']['compile_check']
    assert [(c['path'], c['mode']) for c in checks] == [('loader', 'trd'), ('device', 'trd')]
    for c in checks:
        assert c['distinct_sizes'] == 2 and c['graphs'] <= 2 and c['graphs_after_first_epoch'] == 0 and c['holds']
        assert c['graph_kinds'] == {'static': c['graphs'], 'dynamic': 0}  # one static graph per size


def test_summary_table_has_a_row_per_phase_and_configuration(dry_run):
    table = dry_run['table']
    assert 'ideal time ratio 0.625' in table.splitlines()[0]
    header = table.splitlines()[1]
    for column in ('time ratio', 'ideal', 'ratio/ideal', '(paired)', 'data ms/reduced', 'step ms 32 / 16'):
        assert column in header
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in table.splitlines()[3:]]
    phases = [r[0] for r in rows if r[0]]
    assert phases == ['setup', 'trainpy-loader', 'trainpy-device', 'bench-compute', 'bench-loader', 'compile']
    bench = [r for r in rows if r[3] in ('baseline', 'loader', 'device') and r[6]]
    assert len(bench) == 6
    for r in bench:
        assert re.fullmatch(r'\d+\.\d{3}( ± \d+\.\d{3})?', r[6]) and r[7] in ('1.000', '0.625')
    assert sum('2 graphs (2 static, 0 dynamic) for 2 sizes' in line for line in table.splitlines()) == 2


def test_train_py_phases_log_trd_and_write_summary_csv(dry_run, train_script):
    result = dry_run['json']
    for path in ('loader', 'device'):
        phase = result['phases'][f'trainpy-{path}']
        assert phase['status'] == 'ok', phase
        assert any(f'{path} path' in line for line in phase['trd_lines'])
        assert [(e['epoch'], e['reduced'], e['batches'], e['path']) for e in phase['epochs']] == [
            (0, 1, 2, path), (1, 1, 2, path)]
        assert [int(row['train_trd_reduced_batches']) for row in phase['summary']] == [1, 1]
        assert phase['single_process']  # torchrun --nproc_per_node 1: WORLD_SIZE 1, no process group
        assert phase['step_ms_full'] > 0 and phase['ratio_paired'] > 0
    assert '| trainpy-loader | ok' in dry_run['table']


def test_prepare_copies_photos_within_the_budget(tmp_path):
    gpu_check = load_gpu_check()
    src = tmp_path / 'photos'
    for c in range(3):
        (src / f'n{c}').mkdir(parents=True)
        for i in range(4):
            size = (900, 600) if i == 0 else (320, 240)  # one larger than ImageNet's usual 500 px
            Image.effect_noise(size, 64).convert('RGB').save(src / f'n{c}' / f'{i}.JPEG', quality=90)
    written, total = gpu_check.copy_jpegs(src, tmp_path / 'jpeg', count=7, budget_mb=100)
    files = sorted((tmp_path / 'jpeg' / 'train').rglob('*.JPEG'))
    assert written == len(files) == 7 and total == sum(f.stat().st_size for f in files)
    assert {f.parent.name for f in files} == {'n0', 'n1', 'n2'}  # round-robin over the classes
    assert max(max(Image.open(f).size) for f in files) == 500
    one = files[0].stat().st_size
    written, total = gpu_check.copy_jpegs(src, tmp_path / 'jpeg', count=100, budget_mb=2.5 * one / 2 ** 20)
    assert written == 2 and total <= 2.5 * one
    call = gpu_check.device_call()
    assert call['carry'] == ['.gpu_check'] and call['timeout_s'] <= 600 and 'gpu_check.sh' in call['command']
