"""experiments/reproduce.py: the arms' train.py and timm-trd-eval command lines, the frontier plan, the compute
accounting and the report, on fabricated result rows (the full runs need timm's train.py and the shared datasets;
one short real run per kind of arm checks the size counting where $TIMM_TRAIN_SCRIPT is set)."""

import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import TESTS

SCRIPT = TESTS.parent / 'experiments' / 'reproduce.py'


@pytest.fixture
def reproduce():
    spec = importlib.util.spec_from_file_location('reproduce_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(args, option, count=1):
    i = args.index(option)
    return args[i + 1] if count == 1 else args[i + 1:i + 1 + count]


def test_each_frontier_arm_trains_with_its_own_epochs_sizes_and_options(reproduce, tmp_path):
    def args(config):
        return reproduce.train_args('imagenette', config, 1, tmp_path, tmp_path, 'run', 1)

    for config, epochs in (('baseline-0.6x', 6), ('baseline', 10), ('baseline-1.6x', 16), ('trd50-1.6x', 16),
                           ('trd90-3x', 30), ('trd50-80px', 10), ('timm-sizes50', 10), ('lowres', 10)):
        a = args(config)
        assert _value(a, '--epochs') == _value(a, '--val-interval') == str(epochs)
        assert _value(a, '--seed') == '1'
    assert _value(args('trd50'), '--trd-size') == '56' and _value(args('trd50'), '--trd-prob') == '0.5'
    assert _value(args('trd90-3x'), '--trd-prob') == '0.9' and _value(args('trd50-80px'), '--trd-size') == '80'
    for config in ('baseline', 'baseline-1.6x', 'timm-sizes50', 'lowres'):
        assert '--trd-prob' not in args(config)
    timm_sizes = args('timm-sizes50')
    assert _value(timm_sizes, '--train-img-sizes', 2) == ['112', '56']
    assert _value(timm_sizes, '--train-size-probs', 2) == ['0.5', '0.5'] and _value(timm_sizes, '--img-size') == '112'
    assert _value(args('lowres'), '--img-size') == '56'  # trained (and validated by train.py) at 56
    assert _value(args('trd90-bnrecal'), '--trd-bn-recal') == '20'
    with pytest.raises(SystemExit, match='not below'):  # 80 px is no reduction of CIFAR's 32
        reproduce.train_args('cifar10', 'trd50-80px', 0, tmp_path, tmp_path, 'run', 1)


def test_every_arm_is_evaluated_at_the_full_size_with_the_recipes_crop(reproduce, tmp_path):
    a = reproduce.eval_args('imagenette', tmp_path / 'last.pth.tar', tmp_path, tmp_path / 'e.json', 1, 1000, None)
    assert _value(a, '--img-size') == '112' and _value(a, '--recal-batch-size') == '64'
    assert _value(a, '--probe-images') == '1000' and '--max-images' not in a and '--scale' not in a
    c = reproduce.eval_args('cifar10', tmp_path / 'last.pth.tar', tmp_path, tmp_path / 'e.json', 1, 500, 200)
    assert _value(c, '--scale', 2) == ['0.35', '1'] and _value(c, '--crop-pct') == '1.0'
    assert _value(c, '--img-size') == '32' and _value(c, '--max-images') == '200'


def _plan(reproduce, *argv):
    return reproduce.plan(reproduce.parse_args(list(argv)))


def test_frontier_plan_has_every_arm_with_its_seeds_seeds_outermost(reproduce):
    runs = _plan(reproduce, '--frontier')
    assert {r[0] for r in runs} == {'imagenette'} and len(runs) == 33
    seeds = {c: sorted(s for _, cc, s in runs if cc == c) for c in reproduce.FRONTIER}
    for config in ('baseline-0.6x', 'baseline', 'baseline-1.6x', 'trd50', 'trd50-1.6x'):
        assert seeds[config] == [0, 1, 2]
    for config in ('trd90', 'trd90-3x', 'trd50-80px', 'timm-sizes50', 'lowres', 'lowres-2.4x', 'lowres-4x',
                   'timm-progressive', 'timm-progressive-1.6x'):
        assert seeds[config] == [0, 1]
    assert [s for _, _, s in runs] == sorted(s for _, _, s in runs)  # a whole seed before the next
    assert [c for _, c, s in runs if s == 2] == ['baseline-0.6x', 'baseline', 'baseline-1.6x', 'trd50', 'trd50-1.6x']
    smoke = _plan(reproduce, '--frontier', '--seeds', '0')
    assert [c for _, c, _ in smoke] == list(reproduce.FRONTIER)
    default = _plan(reproduce)
    assert len(default) == 18 and {c for _, c, _ in default} == set(reproduce.DEFAULT_CONFIGS)


def test_compute_is_training_flops_over_the_baselines_at_the_reference_epochs(reproduce):
    flops = reproduce._flops_per_image('test_resnet', ['112x112', '56x56'])
    ratio = flops['56x56'] / flops['112x112']
    assert 0.2 < ratio < 0.3
    per_epoch = 3000 // 64 * 64  # train.py drops the last, partial batch

    def columns(config, sizes, batches, saved=None):
        timing = {'images_per_size': sizes, 'batches_per_size': batches}
        last = {'train_trd_saved_cum': str(saved)} if saved is not None else {}
        return reproduce.compute_columns('imagenette', config, timing, last, train_images=3000)

    base = columns('baseline', {'112x112': 10 * per_epoch}, {'112x112': 460})
    assert base['compute'] == 1.0 and base['flop_share'] == 1.0 and base['reduced_batch_share'] == 0.0
    short = columns('baseline-0.6x', {'112x112': 6 * per_epoch}, {'112x112': 276})
    assert short['compute'] == 0.6
    low = columns('lowres', {'56x56': 10 * per_epoch}, {'56x56': 460})
    assert low['compute'] == pytest.approx(ratio, abs=1e-4) and low['reduced_batch_share'] == 1.0
    # timm's random sizes: the measured share (here 47 % of batches), not the configured 0.5
    mixed = columns('timm-sizes50', {'112x112': 244 * 64, '56x56': 216 * 64}, {'112x112': 244, '56x56': 216})
    assert mixed['reduced_batch_share'] == pytest.approx(216 / 460, abs=1e-4)
    assert mixed['compute'] == pytest.approx((244 + 216 * ratio) / 460, abs=1e-4)
    assert mixed['train_sizes'] == '112x112:15616 56x56:13824' and 'compute_plugin' not in mixed
    # TRD P 0.5 for 16 epochs: the plugin's share of its own run, times 16/10
    trd = columns('trd50-1.6x', {'112x112': 16 * 23 * 64, '56x56': 16 * 23 * 64}, {'112x112': 368, '56x56': 368},
                  saved=0.5 * (1 - ratio))
    assert trd['compute'] == pytest.approx(1.6 * (1 + ratio) / 2, abs=1e-3)
    assert trd['compute_plugin'] == pytest.approx(trd['compute'], abs=1e-3)


def _row(config, seed, top1, seconds, compute, bias=None, **extra):
    row = {'dataset': 'imagenette', 'config': config, 'seed': seed, 'prob': 0.0, 'full_res_epochs': 0, 'full': 112,
           'reduced': 56, 'train_size': 112, 'train_args': '', 'epochs': 10, 'ref_epochs': 10,
           'train_per_class': 300, 'top1': top1, 'top1_at_56': top1 - 10, 'top1_at_84': top1 - 3,
           'top1_bn_recal': top1 + 0.5, 'train_seconds': seconds, 'compute': compute}
    if bias is not None:
        row.update({'top1_lowpass_0.01': top1 - 5, 'top1_lowpass_0.02': top1 - 15, 'top1_lowpass_0.04': top1 - 30,
                    'top1_shuffle_2': top1 - 20, 'top1_shuffle_4': top1 - 35, 'shape_bias': bias,
                    'conflict_sigma_rel': 0.02, 'conflict_counted': 400, 'top1_trainpy': top1})
    row.update(extra)
    return row


def test_report_tables_plots_and_copies_on_fabricated_rows(reproduce, tmp_path):
    results = [
        _row('baseline-0.6x', 0, 50.0, 200.0, 0.6, 0.40, epochs=6), _row('baseline-0.6x', 1, 52.0, 220.0, 0.6, 0.42, epochs=6),
        _row('baseline', 0, 56.0, 350.0, 1.0, 0.45), _row('baseline', 1, 57.0, 354.0, 1.0, 0.47),
        _row('baseline-1.6x', 0, 58.0, 560.0, 1.6, 0.46, epochs=16),
        _row('trd50', 0, 56.5, 215.0, 0.626, 0.55, prob=0.5), _row('trd50', 1, 55.5, 216.0, 0.626, 0.57, prob=0.5),
        _row('timm-sizes50', 0, 55.0, 210.0, 0.63, 0.5, train_args='--train-img-sizes 112 56 --train-size-probs 0.5 0.5'),
        _row('lowres', 0, 40.0, 95.0, 0.253, 0.7, train_size=56, top1_trainpy=52.0),
        _row('trd90', 0, 53.0, 119.0, 0.334, prob=0.9),  # an older run: no probe columns
    ]
    reproduce.report(json.loads(json.dumps(results)), tmp_path)
    table = (tmp_path / 'results.md').read_text().splitlines()
    assert table[0].startswith('Machine: ') and '10 runs' in table[0]
    header = next(line for line in table if line.startswith('| arm |'))
    assert header.startswith('| arm | epochs | train size | seeds | top-1 | at 56 | at 84 | BN recal. | blur 0.01 | '
                             'blur 0.02 | blur 0.04 | shuffle 2x2 | shuffle 4x4 | shape bias | train time (s) | '
                             'time vs baseline | compute (FLOPs) |')
    rows = [line for line in table if line.startswith('| ') and not line.startswith(('| arm', '|---'))]
    assert [r.split(' | ')[0] for r in rows] == ['| baseline', '| baseline', '| baseline', '| TRD P 0.5', '| TRD P 0.9',
                                                 "| timm's random sizes, P 0.5", '| low resolution only']
    assert rows[1].startswith('| baseline | 10 | 112 | 2 | 56.50 ± 0.71 | 46.50 ± 0.71 | 53.50 ± 0.71 | 57.00 ± 0.71 |')
    assert '| 0.460 ± 0.014 | 352 ± 3 | 1.000 | 1.000 ± 0.000 |' in rows[1]
    assert rows[0].startswith('| baseline | 6 | 112 | 2 |') and '| 0.597 |' in rows[0]
    assert rows[3].startswith('| TRD P 0.5 | 10 | 112 + 56 | 2 | 56.00 ± 0.71 |') and '| 0.560 ± 0.014 |' in rows[3]
    assert rows[4].count('n/a') == 6 and '| 53.00 ± nan |' in rows[4]
    assert rows[5].startswith("| timm's random sizes, P 0.5 | 10 | 112 + 56 | 1 |")
    assert rows[6].startswith('| low resolution only | 10 | 56 | 1 | 40.00 ± nan |')
    assert any('trained at 56 px' in line and '52.00 ± nan' in line for line in table)
    with open(tmp_path / 'results.csv') as f:
        assert [(r['config'], r['seed']) for r in csv.DictReader(f)][:3] == [
            ('baseline-0.6x', '0'), ('baseline-0.6x', '1'), ('baseline', '0')]
    pytest.importorskip('matplotlib')
    assert (tmp_path / 'results.png').stat().st_size > 10_000 and (tmp_path / 'shape_bias.png').stat().st_size > 10_000
    reproduce.copy_results(tmp_path, tmp_path / 'results', 'frontier')
    assert sorted(p.name for p in (tmp_path / 'results').iterdir()) == [
        'frontier.csv', 'frontier.md', 'frontier.png', 'frontier_shape_bias.png']


def test_report_reads_the_runs_of_the_earlier_experiment(reproduce, tmp_path):
    """Rows written before timm-trd-eval (no probes, no train size) still make a table."""
    old = {'dataset': 'cifar10', 'full': 32, 'reduced': 16, 'epochs': 1, 'train_per_class': 10}
    results = [dict(old, config='baseline', prob=0.0, full_res_epochs=0, seed=0, top1=50.0, top1_at_16=20.0,
                    top1_at_24=40.0, top1_bn_recal=51.0, train_seconds=100.0, compute=1.0),
               dict(old, config='trd50', prob=0.5, full_res_epochs=0, seed=0, top1=49.0, top1_at_16=30.0,
                    top1_at_24=45.0, top1_bn_recal=50.0, train_seconds=63.0, compute=0.649)]
    reproduce.report(results, tmp_path)
    table = (tmp_path / 'results.md').read_text()
    assert '| TRD P 0.5 | 1 | 32 + 16 | 1 | 49.00 ± nan | 30.00 ± nan | 45.00 ± nan | 50.00 ± nan | n/a |' in table
    assert '| 63 ± nan | 0.630 | 0.649 ± nan |' in table


@pytest.mark.parametrize('config, sizes', [('timm-sizes50', {'32x32', '16x16'}), ('lowres', {'16x16'}),
                                           ('trd50', {'32x32', '16x16'})])
def test_train_worker_counts_the_sizes_train_py_really_trained_at(reproduce, config, sizes, train_script,
                                                                   image_folder, tmp_path):
    reproduce.DATASETS['toy'] = dict(full=32, reduced=16, model='test_resnet', epochs=1, batch_size=8, lr=0.05,
                                     extra=[], train_per_class=24)
    argv = reproduce.train_args('toy', config, 0, image_folder, tmp_path, 'run', 0)
    argv[argv.index('--num-classes') + 1] = '4'  # the arms' 10 classes; the generated folder has 4
    timing = tmp_path / 'timing.json'
    done = subprocess.run([sys.executable, str(SCRIPT), '_train', str(timing), *argv], capture_output=True,
                          text=True, timeout=300, env={**reproduce._child_env(), 'TIMM_TRAIN_SCRIPT': str(train_script)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(timing.read_text())
    assert set(result['images_per_size']) == sizes
    assert sum(result['batches_per_size'].values()) == 96 // 8  # one epoch, every training step counted once
    assert len(result['epoch_seconds']) == 1


def test_import_results_makes_earlier_rows_finished_runs_with_numbers(reproduce, tmp_path):
    earlier = tmp_path / 'results.csv'
    earlier.write_text('dataset,config,label,seed,epochs,train_seconds,top1,train_args\n'
                       'imagenette,lowres,low resolution only,1,10,36.5,43.2,\n'
                       'imagenette,baseline,baseline,0,10,133,48.6,\n')
    runs = tmp_path / 'runs'
    runs.mkdir()
    (runs / 'imagenette-baseline-s0.json').write_text('{"kept": true}')  # a run of this sitting wins
    assert reproduce.import_results(earlier, runs) == 1
    row = json.loads((runs / 'imagenette-lowres-s1.json').read_text())
    assert row == {'dataset': 'imagenette', 'config': 'lowres', 'label': 'low resolution only', 'seed': 1,
                   'epochs': 10, 'train_seconds': 36.5, 'top1': 43.2}
    assert json.loads((runs / 'imagenette-baseline-s0.json').read_text()) == {'kept': True}
