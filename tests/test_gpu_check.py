"""experiments/gpu_check.sh keeps working: its CPU dry runs go through every phase the two GPU calls run.

Call 1 (accuracy) and call 2 (two processes on one device, torch.compile, speed) run timm's train.py: their
phases need a train.py, found as the other end-to-end tests find it (conftest: $TIMM_TRAIN_SCRIPT, ./train.py, the
copy `timm-trd-train --get-train-script` saved) or --prepare's .gpu_check/train.py, and are skipped otherwise.
The bench_trd.py phases (``--call bench``), --prepare's pieces, the collectives probe and the time plan need no
train.py.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import NO_TRAIN_SCRIPT, found_train_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'experiments' / 'gpu_check.sh'
# the check takes .gpu_check/train.py (--prepare's copy) where there is one, else the train.py the other end-to-end
# tests find (conftest: $TIMM_TRAIN_SCRIPT, ./train.py, the --get-train-script cache), passed as --train-script
FOUND_TRAIN_SCRIPT = found_train_script()
HAS_TRAIN_SCRIPT = FOUND_TRAIN_SCRIPT is not None or (ROOT / '.gpu_check' / 'train.py').is_file()


def load(name):
    """experiments/gpu_check/NAME.py as gpu_check.NAME: the package imported by its path, experiments/ kept off
    sys.path."""
    if 'gpu_check' not in sys.modules:
        folder = ROOT / 'experiments' / 'gpu_check'
        spec = importlib.util.spec_from_file_location('gpu_check', folder / '__init__.py',
                                                      submodule_search_locations=[str(folder)])
        sys.modules['gpu_check'] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules['gpu_check'])
    return importlib.import_module(f'gpu_check.{name}')


plan, accuracy, ddp, train_child, prep = map(load, ('plan', 'accuracy', 'ddp', 'train_child', 'prepare'))


def env():
    e = {**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    e.pop('OUT', None)
    return e


def dry_run(base: Path, call: str):
    extra = ['--train-script', str(FOUND_TRAIN_SCRIPT)] if FOUND_TRAIN_SCRIPT else []
    result = subprocess.run(['bash', str(SCRIPT), '--dry-run', '--call', call, '--out', str(base / 'out'),
                             '--work', str(base / 'work'), *extra], capture_output=True, text=True, env=env(),
                            timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out = base / 'out'
    return dict(out=out, work=base / 'work', stdout=result.stdout,
                json=json.loads((out / 'gpu_check.json').read_text()), table=(out / 'gpu_check.txt').read_text())


@pytest.fixture(scope='module')
def call1(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp('call1'), '1')


@pytest.fixture(scope='module')
def call2(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp('call2'), '2')


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp('bench'), 'bench')


def train_py_phases(run):
    phases = run['json']['phases']
    if not HAS_TRAIN_SCRIPT:
        for name, entry in phases.items():
            if name != 'setup':
                assert entry['status'] == 'skipped' and 'train.py' in entry['reason']
        pytest.skip(NO_TRAIN_SCRIPT)
    return phases


# -- what every call brings back ---------------------------------------------------------------------
@pytest.mark.parametrize('name', ['call1', 'call2', 'bench'])
def test_results_fit_what_the_device_tool_brings_back(name, request):
    run = request.getfixturevalue(name)
    files = sorted(p for p in run['out'].iterdir())
    assert [p.name for p in files] == ['gpu_check.json', 'gpu_check.txt', 'gpu_check_logs.tar.gz']  # <= 8, plain
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in files)
    result = run['json']
    assert result['mode'] == 'dry-run' and result['finished'] is True and result['seconds'] < result['deadline_s']
    assert list(result['phases']) == list(plan.CALL_PHASES[result['call']])
    assert result['phases']['setup']['status'] == 'ok', result['phases']['setup']
    with tarfile.open(run['out'] / 'gpu_check_logs.tar.gz') as tar:
        names = set(tar.getnames())
    assert {f'logs/{phase}.log' for phase, e in result['phases'].items() if e['status'] != 'skipped'} <= names
    # the tables are printed last, so they end the device tool's output tail
    assert run['stdout'].rstrip().splitlines()[-1].startswith('wrote ')
    assert run['table'].strip() in run['stdout']


def test_the_two_calls_and_the_machine_start_fit_the_device_time():
    start_s, device_s, per_call_s = 120, 900, 540
    calls = plan.DEVICE_CALLS
    deadlines = {c: sum(plan.PROFILES['gpu']['budgets'][ph] for ph in plan.CALL_PHASES[c]) + 5 for c in calls}
    assert set(calls) == {'1', '2'} and start_s + sum(deadlines.values()) <= device_s - 60  # a minute for transfers
    for c, call in calls.items():
        assert deadlines[c] + 10 <= call['timeout_s'] <= per_call_s
        assert plan.device_call(c)['command'] == f'bash experiments/gpu_check.sh --call {c}'
        assert '.gpu_check/wheels' in call['carry'] and '.gpu_check/train.py' in call['carry']
    assert start_s + sum(c['timeout_s'] for c in calls.values()) <= device_s  # even if both run to their hard stop
    assert set(plan.CALL_PHASES['all']) == set(plan.PHASES)


# -- call 1: accuracy ------------------------------------------------------------------------------------
def test_accuracy_arms_train_the_same_epochs_and_compare_to_the_baseline(call1):
    phases = train_py_phases(call1)
    epochs = plan.PROFILES['dry']['acc']['epochs']
    for arm in plan.ACC_ARMS:
        e = phases[arm]
        assert e['status'] == 'ok', e
        assert [x['epoch'] for x in e['epochs']] == list(range(epochs))
        assert all(x['top1'] is not None and x['train_s'] > 0 for x in e['epochs'])
        assert e['train_s_per_epoch'] > 0 and e['epoch_s_per_epoch'] >= e['train_s_per_epoch']
    assert phases['acc-baseline']['reduced_share'] == 0
    assert phases['acc-trd']['reduced_share'] == 0.5  # 1 of the 2 batches each epoch, counted at the model
    assert 0 <= phases['acc-sizes']['reduced_share'] <= 1
    assert phases['acc-trd']['bn_recal_lines'] == epochs and phases['acc-baseline']['bn_recal_lines'] == 0
    comparison = call1['json']['comparison']
    assert comparison['common_epochs'] == epochs
    assert comparison['arms']['acc-baseline']['train_time_ratio'] == 1
    assert comparison['arms']['acc-trd']['train_time_ratio'] > 0
    table = call1['table']
    assert 'Accuracy (dry-run): resnet10t from scratch, 32 px (reduced 16)' in table
    assert sum(f'| {arm} ' in table for arm in plan.ACC_ARMS) == 3


def test_memory_bound_compares_each_arm_with_the_full_size_run():
    def arm(reserved, allocated, retries=0):
        return dict(epochs=[dict(top1=50.0)], train_s_per_epoch=1.0, epoch_s_per_epoch=1.2,
                    memory=dict(max_reserved=reserved, max_allocated=allocated, alloc_retries=retries))
    gib = 2 ** 30
    bound = plan.MEMORY_BOUND
    phases = {'acc-baseline': arm(10 * gib, 8 * gib), 'acc-trd': arm(10 * gib * (1 + bound / 2), 8 * gib),
              'acc-sizes': arm(10 * gib * (1 + 2 * bound), 8 * gib)}
    arms = accuracy.compare_arms(phases)['arms']
    assert arms['acc-trd']['memory_bound_holds'] and not arms['acc-sizes']['memory_bound_holds']
    assert arms['acc-trd']['reserved_over_baseline'] == pytest.approx(bound / 2)
    phases['acc-trd']['memory']['alloc_retries'] = 1  # the allocator had to free its cache and retry
    assert not accuracy.compare_arms(phases)['arms']['acc-trd']['memory_bound_holds']


# -- call 2: two processes on one device, torch.compile, speed ---------------------------------------
def test_two_processes_end_every_epoch_with_the_same_model(call2):
    phases = train_py_phases(call2)
    for name in ('ddp', 'ddp-syncbn'):
        e = phases[name]
        assert e['status'] == 'ok', e
        assert all(e['checks'].values()) and len(e['checks']) >= 7, e['checks']
        assert e['backend'] == 'gloo' and all(v is True for v in e['collectives'].values())
        # each epoch: the model and its EMA validated, with digests from both ranks
        assert sorted(e['digests']) == ['0 ema', '0 model', '1 ema', '1 model']
    assert "train.py's distribute_bn ran" in phases['ddp']['checks']
    assert 'SyncBatchNorm' in phases['ddp-syncbn']['reason']  # said, not silently dropped, on the CPU


def test_ddp_check_catches_ranks_that_differ(call2):
    train_py_phases(call2)
    work = call2['work']
    ranks = train_child.read_probe(work / 'probes' / 'ddp')
    log = (work / 'logs' / 'ddp.log').read_text()
    c = plan.PROFILES['dry']['ddp']
    assert all(ddp.parse_ddp(ranks, log, c, dist_bn=True, sync_bn=False)['checks'].values())
    changed = copy.deepcopy(ranks)
    record = next(r for r in changed[1] if r['kind'] == 'validate' and r['label'] == 'ema')
    record['digests']['buffers'] = '0' * 16
    checks = ddp.parse_ddp(changed, log, c, dist_bn=True, sync_bn=False)['checks']
    assert checks['same weights and buffers on every rank'] is False
    assert ddp.parse_ddp({0: ranks[0]}, log, c, dist_bn=True, sync_bn=False)['checks']['2 ranks'] is False


def test_compile_phases_build_one_graph_per_size_in_epoch_0_only(call2):
    phases = train_py_phases(call2)
    for name in ('compile-default', 'compile-reduce-overhead'):
        e = phases[name]
        assert e['status'] == 'ok', e
        assert e['train_sizes'] == 2 and e['train_graphs_per_epoch'] == [2, 0], e
        assert e['val_graphs_per_epoch'][0] >= 1 and sum(e['val_graphs_per_epoch'][1:]) == 0
        assert any('size mismatch' in g for g in e['recompile_guards']), e['recompile_guards']
        assert e['dynamo_compile_s'] > 0 and all(e['checks'].values())
    assert "2 training sizes" in call2['table']


def test_speed_phases_time_each_path_against_the_full_size_run(call2):
    phases = train_py_phases(call2)
    for name in plan.SPEED_PHASES:
        e = phases[name]
        assert e['status'] == 'ok', e
        assert len(e['summary']) == 2 and e['train_s_per_epoch'] > 0 and e['single_process']
    for path in ('loader', 'device'):
        e = phases[f'trainpy-{path}']
        assert [(x['epoch'], x['reduced'], x['batches'], x['path']) for x in e['trd_epochs']] == [
            (0, 1, 2, path), (1, 1, 2, path)]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in call2['table'].splitlines()
            if line.startswith('| trainpy-')]
    assert [r[0] for r in rows] == list(plan.SPEED_PHASES)
    assert rows[0][6] == '' and all(float(r[6]) > 0 for r in rows[1:])  # time ratio against trainpy-baseline


def test_collectives_on_two_processes_of_one_device(tmp_path):
    prefix = tmp_path / 'coll'
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             str(ROOT / 'experiments' / 'gpu_check' / 'train_child.py'), '--probe-out', str(prefix),
                             '--collectives-only'], capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = train_child.read_probe(prefix)
    assert sorted(ranks) == [0, 1]
    for records in ranks.values():
        coll = next(r for r in records if r['kind'] == 'collectives')
        assert coll['backend'] == 'gloo' and coll['world'] == 2
        assert {n: r['ok'] for n, r in coll['results'].items()} == {n: True for n in (
            'broadcast', 'all_reduce', 'reduce', 'all_gather', 'all_gather_into_tensor', 'reduce_scatter_tensor',
            'all_gather_object', 'barrier')}


# -- --call bench: bench_trd.py's phases -------------------------------------------------------------
def test_benchmark_phases_report_ratio_ideal_and_data_wait(bench):
    result = bench['json']
    assert result['environment']['loader_path_unavailable'] is None  # timm >= 1.0.29 (setup.cfg asks for more)
    for phase in ('bench-compute', 'bench-loader', 'bench-compile'):
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
    checks = result['phases']['bench-compile']['compile_check']
    assert [(c['path'], c['mode']) for c in checks] == [('loader', 'trd'), ('device', 'trd')]
    for c in checks:
        assert c['distinct_sizes'] == 2 and c['graphs'] <= 2 and c['graphs_after_first_epoch'] == 0 and c['holds']
        assert c['graph_kinds'] == {'static': c['graphs'], 'dynamic': 0}  # one static graph per size
    table = bench['table']
    assert 'ideal time ratio 0.625' in table
    assert sum('2 graphs (2 static, 0 dynamic) for 2 sizes' in line for line in table.splitlines()) == 2


# -- --prepare -------------------------------------------------------------------------------------
def test_prepare_copies_photos_within_the_budget(tmp_path):
    src = tmp_path / 'photos'
    for c in range(3):
        (src / f'n{c}').mkdir(parents=True)
        for i in range(4):
            size = (900, 600) if i == 0 else (320, 240)  # one larger than ImageNet's usual 500 px
            Image.effect_noise(size, 64).convert('RGB').save(src / f'n{c}' / f'{i}.JPEG', quality=90)
    written, total = prep.copy_jpegs(src, tmp_path / 'jpeg', count=7, budget_mb=100)
    files = sorted((tmp_path / 'jpeg' / 'train').rglob('*.JPEG'))
    assert written == len(files) == 7 and total == sum(f.stat().st_size for f in files)
    assert {f.parent.name for f in files} == {'n0', 'n1', 'n2'}  # round-robin over the classes
    assert max(max(Image.open(f).size) for f in files) == 500
    one = files[0].stat().st_size
    written, total = prep.copy_jpegs(src, tmp_path / 'jpeg', count=100, budget_mb=2.5 * one / 2 ** 20)
    assert written == 2 and total <= 2.5 * one


def test_prepare_reencodes_a_per_class_subset_of_imagenette(tmp_path):
    src = tmp_path / 'src' / 'imagenette'
    for split, n in (('train', 5), ('val', 3)):
        for c in ('n01', 'n02'):
            (src / split / c).mkdir(parents=True)
            for i in range(n):
                Image.effect_noise((224, 224), 64).convert('RGB').save(src / split / c / f'img_{i}.JPEG', quality=95)
    archive = tmp_path / 'imagenette-224.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(src, arcname='imagenette')
    dest = tmp_path / 'copy'
    manifest = prep.reencode_imagenette(archive, dest, size=48, quality=80, train_per_class=3, val_per_class=1)
    assert manifest['images'] == {'train': 6, 'val': 2} and manifest['classes'] == 2
    train = sorted(p.relative_to(dest).as_posix() for p in (dest / 'train').rglob('*.JPEG'))
    assert train == [f'train/{c}/img_{i}.JPEG' for c in ('n01', 'n02') for i in range(3)]  # first 3 in name order
    assert sorted(p.name for p in (dest / 'val').rglob('*.JPEG')) == ['img_0.JPEG', 'img_0.JPEG']
    assert {Image.open(p).size for p in dest.rglob('*.JPEG')} == {(48, 48)}
    assert manifest['bytes'] == sum(p.stat().st_size for p in dest.rglob('*.JPEG'))
    stamp = (dest / 'manifest.json').stat().st_mtime_ns
    assert prep.reencode_imagenette(archive, dest, 48, 80, 3, 1) == manifest  # the same settings: nothing to do
    assert (dest / 'manifest.json').stat().st_mtime_ns == stamp
    assert prep.reencode_imagenette(archive, dest, 32, 80, 3, 1)['size'] == 32  # others: written again
    assert {Image.open(p).size for p in dest.rglob('*.JPEG')} == {(32, 32)}


def test_prepare_counts_what_each_call_carries_and_refuses_over_the_limit(tmp_path):
    big = tmp_path / 'big.bin'
    with open(big, 'wb') as f:
        f.truncate(65 * 2 ** 20)  # sparse: its size counts, no disk used
    small = tmp_path / 'small'
    small.mkdir()
    (small / 'a.bin').write_bytes(b'x' * 1000)
    calls = {'1': dict(carry=[str(big)]), '2': dict(carry=[str(small)])}
    sizes = prep.travel_report(calls)
    assert sizes['1'][1] == 65 * 2 ** 20 and sizes['2'][1] == 1000 and sizes['1'][0] == sizes['2'][0] > 0
    lines, over = prep.travel_check(sizes, calls)
    assert over == ['1'] and len(lines) == 2 and '(limit 64 MiB)' in lines[0]
    result = subprocess.run(['bash', str(SCRIPT), '--prepare', '--images', str(tmp_path / 'none'),
                             '--train-script', str(big)], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith('gpu_check: error: --prepare needs --images')


def test_the_skips_find_the_cached_train_py_as_the_other_end_to_end_tests_do(tmp_path):
    """With no $TIMM_TRAIN_SCRIPT, the copy --get-train-script saved in the cache is the one the phases get."""
    from timm_trd.cli.train_script import cached_script_name, timm_version
    cache = tmp_path / 'cache'
    (cache / 'timm-trd').mkdir(parents=True)
    cached = cache / 'timm-trd' / cached_script_name(timm_version())
    cached.write_text((ROOT / 'tests' / 'mini_train.py').read_text())  # any file with train.py's seams
    probe = ('import sys; sys.path.insert(0, "tests"); import test_gpu_check as t; '
             'print(t.HAS_TRAIN_SCRIPT, t.FOUND_TRAIN_SCRIPT)')
    environ = {k: v for k, v in env().items() if k != 'TIMM_TRAIN_SCRIPT'}
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**environ, 'XDG_CACHE_HOME': str(cache), 'PYTHONPATH': str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['True', str(cached.resolve())]
