"""TRD follows what train.py really does: the epochs its scheduler runs, the model it builds, its own loader
options, resume; and the smaller guarantees around them (static compile graphs, figures without nan, the
loader path's start-up self-check).

The CI-side tests run tests/mini_train.py, which hands its arguments to timm's own ``create_scheduler_v2``,
``create_loader``, ``CheckpointSaver`` and ``resume_checkpoint`` as train.py does; the end-to-end twins run
timm's train.py ($TIMM_TRAIN_SCRIPT) and skip without it.
"""
import argparse
import csv
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import MINI_TRAIN, PATHS
from timm_trd import TRDLoader, TRDSchedule, install
from timm_trd.plugin.accounting import CostModel
from timm_trd.errors import TRDConfigError
from timm_trd.cli.train_script import load_train_module
from timm_trd.plugin.report import epoch_line
from timm_trd.data.sampler import loader_path_unavailable
from timm_trd.data.toy_data import make_image_folder

FULL, SMALL = 40, 24


def run(module, monkeypatch, *argv):
    monkeypatch.setattr('sys.argv', ['mini_train.py', *argv])
    plugin = install(module)
    return plugin, module.main()


# -- 1. the epochs train.py's scheduler runs -------------------------------------------------------------------------

SCHEDS = ['cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly', 'wsd', 'rsqrt', 'constant', 'none']
VARIANTS = {
    'plain': [],
    'cooldown': ['--cooldown-epochs', '3'],
    'cycles': ['--lr-cycle-limit', '2'],
    'cycle-mul': ['--lr-cycle-limit', '2', '--lr-cycle-mul', '1.5', '--cooldown-epochs', '2'],
    'warmup-prefix': ['--warmup-epochs', '2', '--warmup-prefix', '--cooldown-epochs', '1'],
    'on-updates': ['--sched-on-updates', '--cooldown-epochs', '2', '--lr-cycle-limit', '2', '--lr-cycle-mul', '1.5'],
}


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('sched', SCHEDS)
def test_the_plan_spans_the_epochs_timms_scheduler_runs(mini_train, sched, variant):
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    plugin = install(mini_train)
    argv = ['--sched', sched, '--epochs', '6', '--decay-epochs', '2', '--trd-prob', '0.5', *VARIANTS[variant]]
    args, _ = _parse(mini_train, argv)
    # what train.py then runs: range(start, num_epochs) with the scheduler's count, for its real updates per epoch
    for updates_per_epoch in (1, 7):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        try:
            _, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
        except (AssertionError, ValueError) as e:  # timm refuses it (plateau per update, rsqrt without warmup)
            with pytest.raises(type(e)):  # and so does train.py's call, wrapped
                plugin.create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
            continue
        plugin.create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
        assert plugin.schedule.total_epochs == num_epochs


def _parse(module, argv):
    sys_argv = sys.argv
    sys.argv = ['mini_train.py', *argv]
    try:
        return module._parse_args()
    finally:
        sys.argv = sys_argv


def test_step_schedule_with_cooldown_runs_its_full_resolution_tail(mini_train, image_folder, monkeypatch):
    # --sched step adds no cooldown epochs: 3 epochs run, the tail is epoch 2
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--sched', 'step', '--epochs', '3', '--cooldown-epochs', '3', '--trd-prob', '1',
                         '--trd-size', str(SMALL), '--trd-full-res-epochs', '1')
    assert result['num_epochs'] == 3 == plugin.schedule.total_epochs
    assert [m['trd_reduced_batches'] for m in result['epochs']] == [12, 12, 0]
    assert {tuple(s[2:]) for s in result['shapes']['2']} == {(FULL, FULL)}


def test_cycles_keep_trd_on_in_the_second_cycle(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--epochs', '2', '--lr-cycle-limit', '2', '--trd-prob', '0.5', '--trd-size', str(SMALL))
    assert result['num_epochs'] == 4 == plugin.schedule.total_epochs
    assert [m['trd_reduced_batches'] for m in result['epochs']] == [6, 6, 6, 6]


def test_a_tail_longer_than_the_scheduled_epochs_is_rejected_up_front(mini_train, image_folder, monkeypatch, capsys):
    from timm_trd.cli import launcher
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
            '--sched', 'step', '--epochs', '3', '--cooldown-epochs', '3', '--trd-prob', '0.5', '--trd-full-res-epochs', '4']
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count('\n') == 0
    assert 'leaves no epoch for TRD in a run of 3 epochs' in err


def test_the_plan_follows_the_count_train_py_gets(mini_train):
    # counted ahead from the arguments; if train.py's own call counts otherwise, the plan follows that call
    from timm.scheduler import create_scheduler_v2
    plugin = install(mini_train)
    _parse(mini_train, ['--epochs', '3', '--trd-prob', '0.5', '--trd-full-res-epochs', '2'])
    assert plugin.schedule.total_epochs == 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plugin.create_scheduler_v2(optimizer, sched='cosine', num_epochs=5, updates_per_epoch=4)
    assert plugin.schedule.total_epochs == 5 and plugin.schedule.window_epochs == 3
    with pytest.raises(TRDConfigError, match='leaves no epoch for TRD in a run of 2 epochs'):
        plugin.create_scheduler_v2(optimizer, sched='step', num_epochs=2, updates_per_epoch=4)
    assert create_scheduler_v2 is plugin.original['create_scheduler_v2']


# -- 2. models that accept one input size only -------------------------------------------------------------------------

def test_a_fixed_size_model_stops_before_the_first_step_with_the_fix(image_folder, capsys):
    from timm_trd.cli import launcher
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--model', 'test_vit3',
            '--img-size', '160', '--trd-prob', '0.5', '--trd-size', '80', '--trd-granularity', 'epoch', '--epochs', '4']
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith('timm-trd: error: ')]
    assert exit_info.value.code == 2 and len(lines) == 1
    assert 'runs at 160x160 but not at the TRD size 80x80' in lines[0]
    assert '--model-kwargs dynamic_img_size=True' in lines[0]
    assert 'MINI_RESULT' not in captured.out


def test_a_dynamic_size_vit_without_padding_is_told_to_pad_or_take_a_patch_multiple(image_folder, capsys):
    from timm_trd.cli import launcher
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--model', 'test_vit3',
            '--model-kwargs', 'dynamic_img_size=True', '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '30',
            '--epochs', '1']
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('timm-trd: error: ')]
    assert exit_info.value.code == 2 and len(lines) == 1
    assert 'runs at 64x64 but not at the TRD size 30x30' in lines[0]
    assert ('dynamic_img_size=True is set, but the size must also be a multiple of the patch (16x16): add '
            '--model-kwargs dynamic_img_size=True dynamic_img_pad=True, or pick a --trd-size that is a multiple of '
            'the patch') in lines[0]


def test_a_dynamic_size_vit_trains_with_trd(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--model', 'test_vit3',
                         '--model-kwargs', 'dynamic_img_size=True', '--img-size', '64', '--trd-prob', '0.5',
                         '--trd-size', '32', '--epochs', '1')
    assert plugin.cost.source == 'flops' and {tuple(s[2:]) for s in result['shapes']['0']} == {(64, 64), (32, 32)}


# -- 3. train.py's own scheduled-loader options (also in test_bad_input's CASES, with train.py) -------------------

@pytest.mark.parametrize('extra,expected', [
    (['--train-batch-sizes', '8', '4'], '--train-batch-sizes does not work with TRD'),
    (['--train-batches-per-epoch', '5'], '--train-batches-per-epoch does not work with TRD'),
    (['--train-size-schedule', 'progressive'], '--train-size-schedule progressive does not work with TRD'),
    (['--train-size-probs', '0.5', '0.5'], '--train-size-probs does not work with TRD'),
])
@pytest.mark.parametrize('path', ['auto', 'device'])
def test_trains_own_scheduled_loader_options_are_rejected(image_folder, capsys, extra, expected, path):
    from timm_trd.cli import launcher
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
            '--trd-prob', '0.5', '--trd-mode', path, *extra]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count('\n') == 0 and expected in err


def test_create_loader_arguments_that_trd_cannot_honour_are_refused(mini_train):
    # a script that hands them to create_loader without train.py's option names still gets a clear stop
    plugin = install(mini_train)
    _parse(mini_train, ['--trd-prob', '0.5', '--img-size', str(FULL)])
    with pytest.raises(TRDConfigError, match='batch_size_choices, num_batches'):
        plugin.create_loader(object(), input_size=(3, FULL, FULL), is_training=True, batch_size_choices=[8, 4],
                             num_batches=3)


# -- 6. smaller guarantees ---------------------------------------------------------------------------------------------

def test_compile_builds_one_static_graph_per_size():
    import torch._dynamo
    import torch._dynamo.config as dynamo_config
    from timm_trd.plugin.static_shapes import keep_static_shapes

    graphs = []

    def record(gm, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return gm.forward

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    before = dynamo_config.automatic_dynamic_shapes
    try:
        torch._dynamo.reset()
        assert keep_static_shapes() and not dynamo_config.automatic_dynamic_shapes
        compiled = torch.compile(model, backend=record)
        for size in (32, 16, 32, 16, 32):
            compiled(torch.randn(2, 3, size, size))
        assert len(graphs) == 2  # one per size, none after
        shapes = [s for graph in graphs for s in graph]
        assert all(isinstance(d, int) for s in shapes for d in s)  # no symbolic (dynamic) dimension
        assert {s for s in shapes if s[0] == 2} == {(2, 3, 32, 32), (2, 3, 16, 16)}  # the inputs
    finally:
        dynamo_config.automatic_dynamic_shapes = before
        torch._dynamo.reset()


def test_torchcompile_argument_turns_automatic_dynamic_shapes_off(mini_train):
    import torch._dynamo.config as dynamo_config
    mini_train.parser.add_argument('--torchcompile', default=None)
    plugin = install(mini_train)
    before = dynamo_config.automatic_dynamic_shapes
    try:
        dynamo_config.automatic_dynamic_shapes = True
        _parse(mini_train, ['--trd-prob', '0', '--torchcompile', 'inductor'])
        assert dynamo_config.automatic_dynamic_shapes  # TRD off: dynamo as the user has it
        _parse(mini_train, ['--trd-prob', '0.5', '--torchcompile', 'inductor'])
        assert not dynamo_config.automatic_dynamic_shapes
    finally:
        dynamo_config.automatic_dynamic_shapes = before


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _served(device, sizes):
    schedule = TRDSchedule(prob=1.0, total_epochs=1)
    loader = TRDLoader(_Batches([(torch.zeros(2, 3, s, s, device=device), torch.zeros(2)) for s in sizes]),
                       schedule, (FULL, FULL), (SMALL, SMALL), resize=False)
    for _ in loader:
        pass
    return loader


def test_epoch_line_has_no_nan_and_no_step_rate_off_the_cpu():
    loader = _served('cpu', [SMALL, SMALL])  # no full-size batch at all
    line = epoch_line(0, loader, loader.last_stats, 2, 2, 0.36, 0.64, None)
    assert 'nan' not in line and 'img/s reduced' in line and 'img/s full' not in line and 'ms reduced' in line
    loader = _served('meta', [FULL, SMALL])  # an asynchronous device: its step times are launch times
    line = epoch_line(0, loader, loader.last_stats, 1, 2, 0.68, 0.32, None)
    assert 'img/s' not in line and 'ms full' in line and 'ms reduced' in line


def test_saved_share_counts_what_was_served(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--trd-prob', '0.5', '--trd-size', str(SMALL), '--epochs', '2', '--trd-mode', 'device')
    r = plugin.cost.reduced_ratio
    # epoch 1 again, as if it had served only full-size batches (the plan says half): the figure follows what ran
    loader = plugin.loader
    loader.set_epoch(1)
    loader.resize = False  # nothing shrunk: every batch served at full size
    for _ in loader:
        pass
    figures = plugin.epoch_figures(1, loader)
    assert figures['trd_reduced_batches'] == 0 and figures['trd_compute'] == 1.0
    first = result['epochs'][0]['trd_compute']
    assert figures['trd_saved_cum'] == pytest.approx((1 - first + 0) / 2, abs=1e-6)
    assert first == pytest.approx(1 - 0.5 * (1 - r), abs=1e-6)


@pytest.mark.skipif(loader_path_unavailable() is not None, reason=f'loader path: {loader_path_unavailable()}')
def test_loader_path_falls_back_when_timms_sampler_does_not_follow_the_plan(mini_train, image_folder, monkeypatch,
                                                                           capsys):
    import timm.data.loader as timm_loader
    from timm.data.scheduled_sampler import ScheduledBatchSampler
    from timm_trd.cli import launcher
    from timm_trd.data import sampler

    seen = []
    original_create = timm_loader.create_loader

    def spy(*a, **kw):  # what stands for timm's class while the TRD loader is built
        seen.append(timm_loader.ScheduledBatchSampler)
        return original_create(*a, **kw)

    monkeypatch.setattr(mini_train, 'create_loader', spy)
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--trd-prob', '0.5', '--trd-size', str(SMALL), '--epochs', '1')
    assert plugin.loader.path == 'loader'
    assert isinstance(seen[0], type) and issubclass(seen[0], ScheduledBatchSampler)
    assert isinstance(plugin.loader.batch_sampler, ScheduledBatchSampler)

    # a future timm whose sampler no longer asks _create_schedule: timm's own random draw comes back
    monkeypatch.setattr(sampler.TRDBatchSampler, '_create_schedule', ScheduledBatchSampler._create_schedule)
    module = load_train_module(MINI_TRAIN, name='mini_train_drifted')
    plugin, result = run(module, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--trd-prob', '0.5', '--trd-size', str(SMALL), '--epochs', '1')
    assert plugin.loader.path == 'device'
    assert [s[2:] for s in result['shapes']['0']] == [[SMALL, SMALL] if r else [FULL, FULL] for r in plugin.loader.plan(0)]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
                       '--trd-prob', '0.5', '--trd-mode', 'loader'])
    assert exit_info.value.code == 2 and 'did not follow the TRD plan' in capsys.readouterr().err


# -- 7. resume -----------------------------------------------------------------------------------------------------------

TIME = ('trd_epoch_s', 'trd_img_per_s')


@pytest.mark.parametrize('path', PATHS)
def test_a_resumed_run_serves_the_same_sizes_as_an_uninterrupted_one(image_folder, tmp_path, monkeypatch, path):
    common = ['--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '0.5', '--trd-size', str(SMALL),
              '--trd-mode', path, '--epochs', '3', '--workers', '1']
    whole = run(load_train_module(MINI_TRAIN, name='mini_whole'), monkeypatch, *common,
                '--output', str(tmp_path / 'whole'))[1]
    checkpoint = tmp_path / 'whole' / 'checkpoint-1.pth.tar'
    assert checkpoint.is_file()
    resumed = run(load_train_module(MINI_TRAIN, name='mini_resumed'), monkeypatch, *common, '--resume', str(checkpoint))[1]
    assert sorted(resumed['shapes']) == ['2']
    assert resumed['shapes']['2'] == whole['shapes']['2']
    # the TRD columns but the epoch's wall time and images/s, which no two runs share
    trd = lambda metrics: {k: v for k, v in metrics.items() if k.startswith('trd_') and k not in TIME}  # noqa: E731
    assert trd(resumed['epochs'][0]) == trd(whole['epochs'][2])


# -- through timm's train.py ----------------------------------------------------------------------------------------------

COMMON = ['--model', 'resnet10t', '--num-classes', '4', '--device', 'cpu', '-b', '8', '--workers', '1', '--seed', '7',
          '--lr', '0.01', '--log-interval', '100']


@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('options64'), size=64, train_per_class=8, val_per_class=2)


def train_py(train_script, data, *args, expect=0):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run([sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '--data-dir',
                             str(data), *args], capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == expect, log[-4000:]
    return log


def summary_rows(output):
    with open(output / 'summary.csv') as f:
        return list(csv.DictReader(f))


def test_train_py_step_schedule_and_cooldown(train_script, folder64, tmp_path):
    log = train_py(train_script, folder64, *COMMON, '--img-size', '64', '--sched', 'step', '--epochs', '2',
                   '--cooldown-epochs', '3', '--trd-prob', '1', '--trd-size', '32', '--trd-full-res-epochs', '1',
                   '--output', str(tmp_path), '--experiment', 'e')
    assert 'epochs 0-0 of 2' in log
    assert [int(r['train_trd_reduced_batches']) for r in summary_rows(tmp_path / 'e')] == [4, 0]
    log = train_py(train_script, folder64, *COMMON, '--img-size', '64', '--sched', 'step', '--epochs', '2',
                   '--cooldown-epochs', '3', '--trd-prob', '1', '--trd-full-res-epochs', '2', expect=2)
    assert 'leaves no epoch for TRD in a run of 2 epochs' in log and 'created' not in log


def test_train_py_fixed_size_vit(train_script, folder64, tmp_path):
    vit = ['--model', 'test_vit3', '--num-classes', '4', '--device', 'cpu', '-b', '8', '--workers', '1', '--epochs', '1',
           '--trd-prob', '0.5', '--output', str(tmp_path)]
    # built for 160 px only
    log = train_py(train_script, folder64, *vit, '--img-size', '160', '--trd-size', '80', expect=2)
    errors = [line for line in log.splitlines() if line.startswith('timm-trd: error: ')]
    assert len(errors) == 1 and 'runs at 160x160 but not at the TRD size 80x80' in errors[0]
    assert '--model-kwargs dynamic_img_size=True' in errors[0] and 'Train: 0' not in log
    log = train_py(train_script, folder64, *vit, '--img-size', '64', '--trd-size', '32',
                   '--model-kwargs', 'dynamic_img_size=True', '--experiment', 'dyn')
    assert 'TRD: epoch 0: 2/4 batches at 32x32' in log


@pytest.mark.parametrize('option', [['--train-batch-sizes', '8', '4'], ['--train-batches-per-epoch', '3'],
                                    ['--train-size-schedule', 'progressive']])
def test_train_py_scheduled_loader_options_are_rejected(train_script, folder64, tmp_path, option):
    if option[0] not in train_script.read_text():
        pytest.skip(f'{train_script} has no {option[0]}')
    log = train_py(train_script, folder64, *COMMON, '--img-size', '64', '--epochs', '1', '--trd-prob', '0.5', *option,
                   '--output', str(tmp_path), expect=2)
    assert f'{option[0]}' in log and 'does not work with TRD' in log and 'Train: 0' not in log


def test_train_py_resume_serves_the_same_sizes(train_script, folder64, tmp_path):
    args = [*COMMON, '--img-size', '64', '--epochs', '3', '--trd-prob', '0.5', '--trd-size', '32',
            '--checkpoint-hist', '5']
    whole_log = train_py(train_script, folder64, *args, '--output', str(tmp_path), '--experiment', 'whole')
    checkpoint = tmp_path / 'whole' / 'checkpoint-1.pth.tar'
    assert checkpoint.is_file()
    resumed_log = train_py(train_script, folder64, *args, '--output', str(tmp_path), '--experiment', 'resumed',
                           '--resume', str(checkpoint))
    epoch2 = lambda log: re.search(r'TRD: epoch 2: .*', log).group(0)  # noqa: E731
    assert 'TRD: epoch 0:' not in resumed_log and epoch2(resumed_log) is not None
    order = lambda line: re.search(r'order ([0-9a-f]+)', line).group(1)  # noqa: E731
    assert order(epoch2(resumed_log)) == order(epoch2(whole_log))
    trd = lambda row: {k: v for k, v in row.items()  # noqa: E731
                       if k.startswith('train_trd_') and k[len('train_'):] not in TIME}
    whole_rows, resumed_rows = summary_rows(tmp_path / 'whole'), summary_rows(tmp_path / 'resumed')
    assert trd(resumed_rows[-1]) == trd(whole_rows[2]) and resumed_rows[-1]['epoch'] == '2'
