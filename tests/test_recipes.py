"""The recipes in recipes/: they hold their sources' values, load through train.py, and a tiny version trains.

The first tests need no train.py: every training key of every recipe against a table written here from the
sources (below, with the table and row each value comes from), the TRD settings through timm-trd's own checks,
and the headers. The rest run timm's real train.py from $TIMM_TRAIN_SCRIPT and are skipped without it.
"""
import argparse
import csv
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timm_trd import install
from timm_trd.plugin.config import TRDConfigError, config_from_args
from timm_trd.cli.train_script import load_train_module
from timm_trd.plan.schedule import TRDSchedule, compute_share
from timm_trd.data.toy_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / 'recipes'
TRAIN_NODE = REPO / 'scripts' / 'train_node.sh'

# -- the sources, written out --------------------------------------------------------------------------------------
# RSB: Wightman, Touvron, Jegou, "ResNet strikes back: An improved training procedure in timm", arXiv 2110.00476,
# Table 1, columns A1 / A2 / A3. Each key: (A1, A2, A3); None: the recipe leaves the key out (train.py's default is
# then the table's value: drop_path None = the model's 0, aug_repeats 0).
RSB = {
    'model': ('resnet50',) * 3,                     # the paper's model, a vanilla ResNet-50
    'epochs': (600, 300, 100),                      # row "Epochs"
    'img_size': (224, 224, 160),                    # row "Train Res" (Test Res is 224 for all: see A3's header)
    'batch_size': (256,) * 3,                       # row "Batch size" 2048, as 8 GPUs x 256 (the headers' launch)
    'opt': ('lamb',) * 3,                           # row "Optimizer" LAMB
    'lr': (5e-3, 5e-3, 8e-3),                       # row "LR"
    'sched': ('cosine',) * 3,                       # row "LR decay" cosine
    'weight_decay': (0.01, 0.02, 0.02),             # row "Weight decay"
    'warmup_epochs': (5,) * 3,                      # row "Warmup epochs"
    'smoothing': (0.1, 0.0, 0.0),                   # row "Label smoothing" 0.1 / none / none (train.py's default 0.1)
    'drop_path': (0.05, 0.05, None),                # row "Stoch. Depth" 0.05 / 0.05 / none
    'aug_repeats': (3, 3, None),                    # row "Repeated Aug" yes / yes / no; 3 repeats: timm's RSB commands
    'aa': ('rand-m7-mstd0.5-inc1',) * 2 + ('rand-m6-mstd0.5-inc1',),  # row "Rand Augment" 7/0.5, 7/0.5, 6/0.5;
                                                    # "-inc1" (timm's increasing-severity ops): timm's RSB commands
    'mixup': (0.2, 0.1, 0.1),                       # row "Mixup alpha"
    'cutmix': (1.0,) * 3,                           # row "Cutmix alpha"
    'reprob': (0.0,) * 3,                           # row "Erasing prob." none (train.py's default, made explicit)
    'crop_pct': (0.95,) * 3,                        # row "Test crop ratio"
    'bce_loss': (True,) * 3,                        # rows "CE loss" no, "BCE loss" yes
    'amp': (True,) * 3,                             # row "Mixed precision" yes
    # not in the paper's table:
    'bce_target_thresh': (0.2,) * 3,                # timm's RSB training commands (--bce-target-thresh 0.2)
    'interpolation': ('bicubic',) * 3,              # timm's pretrained configs resnet50.a1_in1k / a2 / a3 (bicubic)
    'train_interpolation': ('bicubic',) * 3,        # timm's RSB training commands (--train-interpolation bicubic)
    'workers': (12,) * 3,                           # not a hyper-parameter: the loader benchmark (README Performance)
}
# Rows of Table 1 that the recipes leave to train.py's defaults, which are the table's values: "Dropout" none
# (--drop 0), "Gradient Clip." none (--clip-grad None), "H. flip" yes (--hflip 0.5), "RRC" yes (--scale 0.08 1),
# "EMA" none (no --model-ema), "ColorJitter" none (timm turns colour jitter off when RandAugment is on; tested
# below through timm's transform factory). The exact match below keeps the recipes from setting any of them.
TRAIN_PY_DEFAULTS = {'drop': 0.0, 'clip_grad': None, 'hflip': 0.5, 'scale': [0.08, 1.0], 'model_ema': False}

# The classic 90-epoch recipe, as torchvision's reference trains ResNet-50 (pytorch/vision,
# references/classification/train.py defaults) for the TRD paper's 76.32 baseline (He et al., arXiv 1512.03385);
# the lr rule: Goyal et al., arXiv 1706.02677 (0.1 x batch / 256).
STANDARD = {
    'model': 'resnet50',
    'img_size': 224,                                # --train-crop-size 224
    'crop_pct': 0.875,                              # --val-resize-size 256, --val-crop-size 224
    'interpolation': 'bilinear', 'train_interpolation': 'bilinear',  # --interpolation bilinear
    'batch_size': 32,                               # -b 32 per GPU, x 8 GPUs = 256
    'opt': 'momentum', 'momentum': 0.9,             # --opt sgd --momentum 0.9: torch SGD, no Nesterov (timm: momentum)
    'lr_base': 0.1, 'lr_base_size': 256, 'lr_base_scale': 'linear',  # --lr 0.1 at 256 images; Goyal et al.
    'weight_decay': 1e-4,                           # --wd 1e-4
    'sched': 'step', 'decay_epochs': 30, 'decay_rate': 0.1,  # --lr-scheduler steplr --lr-step-size 30 --lr-gamma 0.1
    'epochs': 90,                                   # --epochs 90
    'warmup_epochs': 0,                             # --lr-warmup-epochs 0 (train.py's default is 5)
    'smoothing': 0.0,                               # --label-smoothing 0 (train.py's default is 0.1)
    'color_jitter': 0.0, 'hflip': 0.5,              # RandomResizedCrop + RandomHorizontalFlip only
    'amp': True,                                    # NOT the source (fp32): for speed, as the header says
    'workers': 12,                                  # not a hyper-parameter: the loader benchmark (README Performance)
}
# TRD recipe: (its baseline, its TRD keys, compute share, expected top-1 named in the header). Source: Xie et al.,
# "Temporally Resolution Decrement", arXiv 2112.00954, abstract: v2 "ResNet strikes back" strong recipe + TRD 80.42
# "saving 37.5%"; "112x112 within 90% epochs", 77.71 at 33%; v1 only: "112 x 112 within 50% epochs", 78.18 at 63%.
# A2 and A3 + TRD are not published: P 0.5 at half the side, as for A1. trd_bn_recal is not from a source but from
# this project's measurement (docs/options.md): test_bn_recal_in_recipes_and_headers holds what must hold.
TRD = {
    'resnet50_a1_trd': ('resnet50_a1', dict(trd_prob=0.5, trd_size=112), 0.625, '80.42'),
    'resnet50_a2_trd': ('resnet50_a2', dict(trd_prob=0.5, trd_size=112), 0.625, '79.8'),
    'resnet50_a3_trd': ('resnet50_a3', dict(trd_prob=0.5, trd_size=80), 0.625, '78.1'),
    'resnet50_90ep_trd': ('resnet50_90ep', dict(trd_prob=0.9, trd_size=112), 0.325, '77.71'),
    'resnet50_90ep_trd_epochs': ('resnet50_90ep', dict(trd_prob=0.9, trd_size=112, trd_granularity='epoch'), 0.325,
                                 '77.71'),
    'resnet50_90ep_trd50': ('resnet50_90ep', dict(trd_prob=0.5, trd_size=112), 0.625, '78.18'),
}
BASELINE_TOP1 = {'resnet50_a1': '80.4', 'resnet50_a2': '79.8', 'resnet50_a3': '78.1', 'resnet50_90ep': '76.32'}
ALL = sorted([*BASELINE_TOP1, *TRD])
FLEXIBLE = ('trd_bn_recal', 'trd_bn_recal_every', 'trd_bn_recal_last')  # tested for consistency, not for a value (see TRD above)


def load(name):
    with open(RECIPES / f'{name}.yaml') as f:
        return yaml.safe_load(f)


def header(name):
    lines = (RECIPES / f'{name}.yaml').read_text().splitlines()
    return '\n'.join(itertools.takewhile(lambda line: line.startswith('#') or not line.strip(), lines))


def without_trd(recipe):
    return {k: v for k, v in recipe.items() if not k.startswith('trd_')}


def expected(name):
    """The recipe as the sources above give it, every key (the flexible ones left out)."""
    if name in TRD:
        base, trd, _, _ = TRD[name]
        return {**expected(base), **trd}
    if name == 'resnet50_90ep':
        return dict(STANDARD)
    column = ('resnet50_a1', 'resnet50_a2', 'resnet50_a3').index(name)
    return {key: values[column] for key, values in RSB.items() if values[column] is not None}


# -- without train.py ----------------------------------------------------------------------------------------------

def test_every_recipe_is_there_and_nothing_else():
    assert sorted(p.stem for p in RECIPES.glob('*.yaml')) == ALL


@pytest.mark.parametrize('name', ALL)
def test_recipe_is_a_mapping_of_argparse_dests(name):
    recipe = load(name)
    assert isinstance(recipe, dict) and recipe
    # train.py's parser.set_defaults takes dests: 'drop-path' or 'dropPath' would be ignored without a word
    bad = [k for k in recipe if not re.fullmatch(r'[a-z][a-z0-9_]*', str(k))]
    assert not bad, f'{name}: keys must be train.py argparse dests (snake_case): {bad}'


@pytest.mark.parametrize('name', ALL)
def test_recipe_holds_exactly_its_sources_values(name):
    """Every key and value, no key more or less: a later edit of any of them fails here."""
    recipe = {k: v for k, v in load(name).items() if k not in FLEXIBLE}
    want = expected(name)
    changed = {k: (recipe.get(k, '<absent>'), want.get(k, '<absent>')) for k in set(recipe) | set(want)
               if recipe.get(k, '<absent>') != want.get(k, '<absent>')
               or type(recipe.get(k)) is not type(want.get(k))}  # 1 for 1.0 or 'true' for true is a change too
    assert not changed, f'{name}: (recipe, source) differ for {changed}; see the tables in tests/test_recipes.py'


@pytest.mark.parametrize('name', sorted(TRD))
def test_trd_recipe_is_its_baseline_plus_trd(name):
    base_name, trd, share, top1 = TRD[name]
    recipe, base = load(name), load(base_name)
    assert without_trd(recipe) == base
    assert not any(k.startswith('trd_') for k in base)
    config = config_from_args(argparse.Namespace(**recipe))  # timm-trd's own checks, as for a -c YAML
    assert config.enabled and config.prob == trd['trd_prob'] and config.size == (trd['trd_size'],) * 2
    assert config.granularity == trd.get('trd_granularity', 'batch')
    full = recipe['img_size']
    assert trd['trd_size'] / full == 0.5  # the paper's area ratio, a quarter of the pixels
    assert compute_share(config.prob, config.size, (full, full)) == pytest.approx(share)


@pytest.mark.parametrize('name', sorted(TRD))
def test_bn_recal_in_recipes_and_headers(name):
    """Every TRD recipe recalibrates after the last epoch; at P 0.9 (measured to help beyond the seed spread) also
    before every validation, at P 0.5 (not established) only then. The header states N, the schedule, the
    measured figures with their spread, and the cost (CPU ratio, GPU arithmetic)."""
    recipe, text = load(name), header(name)
    bn_recal = recipe.get('trd_bn_recal', 0)
    every, last = recipe.get('trd_bn_recal_every', 1), recipe.get('trd_bn_recal_last', 0)
    assert all(isinstance(v, int) and v >= 0 for v in (bn_recal, every, last))
    config = config_from_args(argparse.Namespace(**recipe))
    assert (config.bn_recal, config.bn_recal_every, config.bn_recal_last) == (bn_recal, every, last)
    when = 'before every validation and after the last epoch' if every == 1 else 'once, after the last epoch'
    stated = re.findall(r'^# BatchNorm recalibration: (\d+) batches in all, (.+) \(measured: see below\)$', text, re.M)
    assert bn_recal > 0 and stated == [(str(bn_recal), when)], (name, bn_recal, stated)
    assert (every, last) == ((1, 0) if recipe['trd_prob'] == 0.9 else (0, 0))
    assert '+-' in text and 'experiments/bn_recal_cost.py' in text and 'GPU arithmetic (assumed' in text
    # N counts over the 8 GPUs the header assumes: the batches per GPU it names
    assert f'{-(-bn_recal // 8)} batches of {recipe["batch_size"]} per GPU' in ' '.join(
        line.lstrip('# ').strip() for line in text.splitlines())


@pytest.mark.parametrize('name', ['resnet50_a1', 'resnet50_a2', 'resnet50_a3'])
def test_rsb_rows_left_to_train_py_defaults_are_the_tables(name):
    """Colour jitter: none in Table 1; the recipes leave train.py's 0.4, which timm's own train transform drops
    when RandAugment is on. Built here with timm's transform factory, as train.py's loader would."""
    from torchvision import transforms as T
    from timm.data import create_transform
    recipe = load(name)
    transform = create_transform(recipe['img_size'], is_training=True, auto_augment=recipe['aa'], color_jitter=0.4,
                                 interpolation=recipe['train_interpolation'], re_prob=recipe['reprob'])
    kinds = [type(t).__name__ for t in transform.transforms]
    assert 'ColorJitter' not in kinds and 'RandAugment' in kinds and 'RandomHorizontalFlip' in kinds
    assert not set(recipe) & set(TRAIN_PY_DEFAULTS)


def test_epoch_reading_names_the_full_size_epochs_of_the_default_seed():
    recipe = load('resnet50_90ep_trd_epochs')
    schedule = TRDSchedule(prob=recipe['trd_prob'], total_epochs=recipe['epochs'], granularity='epoch', seed=42)
    full = sorted(set(range(recipe['epochs'])) - set(schedule.reduced_epochs()))
    assert len(full) == 9
    listed = ', '.join(map(str, full[:-1])) + f' and {full[-1]}'
    assert listed in ' '.join(line.lstrip('# ').strip() for line in header('resnet50_90ep_trd_epochs').splitlines())


def test_default_90_epoch_recipe_states_its_reading():
    text = header('resnet50_90ep_trd')
    assert 'within 90% epochs' in text and 'trd_granularity batch' in text and 'resnet50_90ep_trd_epochs.yaml' in text
    assert 'trd_granularity epoch' in header('resnet50_90ep_trd_epochs')
    assert 'arXiv 2112.00954v1' in header('resnet50_90ep_trd50') and 'within 50% epochs' in header('resnet50_90ep_trd50')


@pytest.mark.parametrize('name', ALL)
def test_header_cites_sources_launch_compute_top1_and_loading(name):
    text = header(name)
    base_name = TRD[name][0] if name in TRD else name
    share, top1 = (TRD[name][2], TRD[name][3]) if name in TRD else (1.0, BASELINE_TOP1[name])
    assert ('arXiv 2110.00476' in text) == (base_name != 'resnet50_90ep')
    if name in TRD or base_name == 'resnet50_90ep':
        assert 'arXiv 2112.00954' in text
    assert 'Launch assumed:' in text and 'GPUs x batch' in text
    assert f'{share:.3f}' in text if name in TRD else 'Compute: 1.00' in text
    assert re.search(rf'Expected top-1 .*\b{re.escape(top1)}\b', text, re.S)
    assert f'# Data loading: workers {load(name)["workers"]} per process' in text
    if name in TRD:
        assert '--trd-reduced-copy' in text


def test_a3_header_says_how_to_measure_at_224():
    for name in ('resnet50_a3', 'resnet50_a3_trd'):
        assert 'validates at the training size' in header(name) or 'runs at 160' in header(name)
    assert 'validate.py' in header('resnet50_a3') and '--img-size 224' in header('resnet50_a3')


def test_bad_trd_value_in_a_recipe_copy_fails_timm_trds_checks():
    recipe = load('resnet50_a1_trd')
    with pytest.raises(TRDConfigError, match='--trd-prob must lie in'):
        config_from_args(argparse.Namespace(**{**recipe, 'trd_prob': 5}))


# -- with timm's train.py ------------------------------------------------------------------------------------------

_ids = itertools.count()


@pytest.fixture
def train_module(train_script):
    """A fresh import of train.py with the plugin installed (its parser keeps -c defaults, so one per test)."""
    name = f'timm_train_recipes_{next(_ids)}'
    module = load_train_module(train_script, name=name)
    plugin = install(module)
    yield module, plugin
    sys.modules.pop(name, None)


def parse(module, plugin, monkeypatch, *argv):
    monkeypatch.setattr(sys, 'argv', [module.__file__, *argv])
    return module._parse_args()[0]  # the plugin's parse_args: YAML key check, train.py's parse, TRD checks


@pytest.mark.parametrize('name', ALL)
def test_recipe_loads_through_train_py(train_module, monkeypatch, tmp_path, name):
    module, plugin = train_module
    recipe = load(name)
    monkeypatch.setenv('WORLD_SIZE', '8')  # the launch the headers assume (aug_repeats needs several processes)
    # --device cpu: train.py's default cuda stops on a machine without CUDA (timm_trd.plugin.train_inputs)
    # and a folder with class folders (an empty one stops: timm_trd.plugin.data_folder)
    data = make_image_folder(tmp_path, size=8, train_per_class=1, val_per_class=0, classes=('circle', 'cross'))
    args = parse(module, plugin, monkeypatch, '-c', str(RECIPES / f'{name}.yaml'), '--data-dir', str(data),
                 '--device', 'cpu')
    for key, value in recipe.items():
        assert getattr(args, key) == value, key
    assert module.parser.get_default('smoothing') == recipe['smoothing']  # the YAML replaced train.py's 0.1
    for key, value in TRAIN_PY_DEFAULTS.items():  # the table's rows the recipes leave to train.py
        assert getattr(args, key) == value, key
    assert plugin.config.enabled == (name in TRD)
    if name in TRD:
        trd = TRD[name][1]
        assert plugin.config.prob == trd['trd_prob'] and plugin.config.size == (trd['trd_size'],) * 2
        assert plugin.schedule.granularity == trd.get('trd_granularity', 'batch')
        assert plugin.schedule.total_epochs == recipe['epochs']
        assert plugin.config.bn_recal == recipe.get('trd_bn_recal', 0)
        assert plugin.config.bn_recal_every == recipe.get('trd_bn_recal_every', 1)


@pytest.mark.parametrize('typo,hint', [('trd_porb', "did you mean 'trd_prob'?"), ('drop-path', "did you mean 'drop_path'?"),
                                       ('bce_target_tresh', "did you mean 'bce_target_thresh'?")])
def test_typo_in_a_recipe_copy_is_rejected_by_train_py(train_module, monkeypatch, tmp_path, typo, hint):
    module, plugin = train_module
    right = typo.replace('porb', 'prob').replace('-', '_').replace('tresh', 'thresh')
    text = (RECIPES / 'resnet50_a1_trd.yaml').read_text()
    assert re.search(rf'^{right}:', text, re.M)
    copy = tmp_path / 'a1_trd_typo.yaml'
    copy.write_text(re.sub(rf'^{right}:', f'{typo}:', text, flags=re.M))
    with pytest.raises(TRDConfigError, match=f"unknown key '{typo}'") as error:
        parse(module, plugin, monkeypatch, '-c', str(copy), '--data-dir', str(tmp_path))
    assert hint in str(error.value)


def test_typo_in_a_recipe_copy_stops_the_launcher(train_script, tmp_path):
    copy = tmp_path / 'a1_trd_typo.yaml'
    copy.write_text((RECIPES / 'resnet50_a1_trd.yaml').read_text().replace('trd_prob:', 'trd_porb:'))
    result = subprocess.run(
        [sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '-c', str(copy), '--data-dir', str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"timm-trd: error: {copy}: unknown key 'trd_porb' (not an option of train.py or timm-trd); did you mean 'trd_prob'?"]


@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('recipe_images'), size=64, train_per_class=16, val_per_class=4)


TINY = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--trd-size', '32', '--epochs', '1',
        '-b', '8', '--workers', '1', '--device', 'cpu', '--log-interval', '100']


def tiny_copy(name, tmp_path):
    """The recipe with AMP off: CPU autocast runs (float16 and bfloat16 alike) but about 10x slower here, and
    train.py's --amp is a store_true flag that the command line cannot turn off again."""
    recipe = {**load(name), 'amp': False}
    path = tmp_path / f'{name}_tiny.yaml'
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize('name', sorted(TRD))
def test_tiny_trd_recipe_trains(train_script, folder64, tmp_path, name):
    """Each TRD recipe, with model, data, sizes and epochs overridden, trains an epoch on the CPU.

    A1 runs as the recipes are meant to, under torchrun through scripts/train_node.sh, two processes: its
    repeated augmentation (aug_repeats 3) needs a distributed run. The others run in one process (A2 with
    --aug-repeats 0).
    """
    recipe = tiny_copy(name, tmp_path)
    out = ['--output', str(tmp_path), '--experiment', 'tiny']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'TIMM_TRAIN_SCRIPT': str(train_script),
           'PYTHON': sys.executable}
    if name == 'resnet50_a1_trd':
        cmd, processes = ['bash', str(TRAIN_NODE), str(recipe), str(folder64), '2', *TINY, *out], 2
    else:
        repeats = ['--aug-repeats', '0'] if load(name).get('aug_repeats') else []
        # epoch granularity needs epochs to alternate: round(0.9 x 6) = 5 of 6 (1 epoch would be wholly reduced,
        # which stops the run: test_bad_input)
        epochs = ['--epochs', '6'] if TRD[name][1].get('trd_granularity') == 'epoch' else []
        cmd, processes = [sys.executable, '-m', 'timm_trd', '-c', str(recipe), '--data-dir', str(folder64),
                          *TINY, *repeats, *epochs, *out], 1
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    trd = TRD[name][1]
    batches = 64 // 8 // processes
    if trd.get('trd_granularity') == 'epoch':
        lines = re.findall(rf'TRD: epoch \d: (\d)/{batches} batches at 32x32', log)
        assert sorted(lines) == ['0'] + [str(batches)] * 5  # 5 of the 6 epochs wholly reduced
        return
    reduced = int(trd['trd_prob'] * batches + 0.5)
    assert f'TRD: epoch 0: {reduced}/{batches} batches at 32x32' in log
    if processes == 2:
        assert 'all 2 ranks served the same sizes in the same order' in log
    recal = load(name).get('trd_bn_recal', 0)
    if recal:  # after the (last) epoch: N over all processes, the 64 / 8 = 8 batches the data has here at most
        assert f'TRD: BatchNorm statistics of the model recomputed at 64x64 on {min(recal, 64 // 8)} training batches' in log
        assert log.count('TRD: BatchNorm statistics of the model recomputed') == 1  # once: the last epoch's
    with open(tmp_path / 'tiny' / 'summary.csv') as f:
        (row,) = list(csv.DictReader(f))
    assert int(row['train_trd_reduced_batches']) == reduced
    assert float(row['train_trd_compute']) == pytest.approx(1 - reduced / batches * 0.75, abs=0.01)
