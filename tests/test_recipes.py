"""The recipes in recipes/: they hold the published values, load through train.py, and a tiny version trains.

The first tests need no train.py: the YAML, the values against the issue's table (RSB, arXiv 2110.00476,
Table 1; the TRD paper's 90-epoch recipe), the TRD settings through timm-trd's own checks, and the headers.
The rest run timm's real train.py from $TIMM_TRAIN_SCRIPT and are skipped without it.
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
from timm_trd.config import TRDConfigError, config_from_args
from timm_trd.launcher import load_train_module
from timm_trd.schedule import compute_share
from timm_trd.toy_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / 'recipes'
TRAIN_NODE = REPO / 'scripts' / 'train_node.sh'

# The table (RSB, arXiv 2110.00476, Table 1): global batch 2048, LAMB, cosine, 5 warmup epochs, BCE,
# no label smoothing, no random erasing, CutMix 1.0, bicubic, test crop 0.95, AMP.
RSB_COMMON = dict(model='resnet50', batch_size=256, opt='lamb', sched='cosine', warmup_epochs=5, bce_loss=True,
                  smoothing=0.0, reprob=0.0, cutmix=1.0, interpolation='bicubic', train_interpolation='bicubic',
                  crop_pct=0.95, amp=True)
RSB = {
    #                epochs  lr    wd    mixup  RandAugment             drop_path repeats  train size
    'resnet50_a1': (600, 5e-3, 0.01, 0.2, 'rand-m7-mstd0.5-inc1', 0.05, 3, 224),
    'resnet50_a2': (300, 5e-3, 0.02, 0.1, 'rand-m7-mstd0.5-inc1', 0.05, 3, 224),
    'resnet50_a3': (100, 8e-3, 0.02, 0.1, 'rand-m6-mstd0.5-inc1', 0.0, 0, 160),
}
# The paper's 90-epoch standard recipe: SGD momentum 0.9, lr 0.1 per 256 images, wd 1e-4, CE, RRC + flip, 224.
STANDARD = dict(model='resnet50', opt='momentum', momentum=0.9, lr_base=0.1, lr_base_size=256, lr_base_scale='linear',
                weight_decay=1e-4, epochs=90, img_size=224, smoothing=0.0, warmup_epochs=0, color_jitter=0.0, hflip=0.5)
# TRD recipe: (its baseline, trd_prob, trd_size, compute share, expected top-1 named in the header)
TRD = {
    'resnet50_a1_trd': ('resnet50_a1', 0.5, 112, 0.625, '80.42'),
    'resnet50_a2_trd': ('resnet50_a2', 0.5, 112, 0.625, '79.8'),
    'resnet50_a3_trd': ('resnet50_a3', 0.5, 80, 0.625, '78.1'),
    'resnet50_90ep_trd': ('resnet50_90ep', 0.9, 112, 0.325, '77.71'),
}
BASELINE_TOP1 = {'resnet50_a1': '80.4', 'resnet50_a2': '79.8', 'resnet50_a3': '78.1', 'resnet50_90ep': '76.32'}
ALL = sorted([*BASELINE_TOP1, *TRD])
TRD_KEYS = ('trd_prob', 'trd_size')


def load(name):
    with open(RECIPES / f'{name}.yaml') as f:
        return yaml.safe_load(f)


def header(name):
    lines = (RECIPES / f'{name}.yaml').read_text().splitlines()
    return '\n'.join(itertools.takewhile(lambda line: line.startswith('#') or not line.strip(), lines))


def without_trd(recipe):
    return {k: v for k, v in recipe.items() if not k.startswith('trd_')}


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


@pytest.mark.parametrize('name', sorted(RSB) + [f'{n}_trd' for n in sorted(RSB)])
def test_rsb_recipe_matches_the_table(name):
    recipe = load(name)
    epochs, lr, wd, mixup, aa, drop_path, repeats, size = RSB[name.replace('_trd', '')]
    for key, value in RSB_COMMON.items():
        assert recipe.get(key) == value, (name, key)
    assert (recipe['epochs'], recipe['lr'], recipe['weight_decay'], recipe['mixup'], recipe['aa']) == (epochs, lr, wd, mixup, aa)
    assert recipe.get('drop_path', 0.0) == drop_path
    assert recipe.get('aug_repeats', 0) == repeats
    assert recipe['img_size'] == size
    assert recipe['batch_size'] * 8 == 2048 and '8 GPUs x batch 256 = global batch 2048' in header(name)
    assert 'lr_base' not in recipe  # an explicit lr, so train.py does not rescale it by the batch size


@pytest.mark.parametrize('name', ['resnet50_90ep', 'resnet50_90ep_trd'])
def test_standard_recipe_matches_the_paper(name):
    recipe = load(name)
    for key, value in STANDARD.items():
        assert recipe.get(key) == value, (name, key)
    assert 'lr' not in recipe  # lr_base per 256 images: train.py scales it to the global batch
    assert not recipe.get('bce_loss') and not recipe.get('mixup') and not recipe.get('cutmix') and not recipe.get('aa')
    assert recipe['batch_size'] * 8 == 256  # the header's 8 GPUs x 32 gives lr 0.1 exactly


@pytest.mark.parametrize('name', ALL)
def test_label_smoothing_is_set_explicitly(name):
    assert load(name)['smoothing'] == 0.0  # train.py's default is 0.1


@pytest.mark.parametrize('name', sorted(TRD))
def test_trd_recipe_is_its_baseline_plus_trd(name):
    base_name, prob, size, share, top1 = TRD[name]
    recipe, base = load(name), load(base_name)
    assert without_trd(recipe) == base
    assert {k: recipe[k] for k in recipe if k.startswith('trd_')} == {'trd_prob': prob, 'trd_size': size}
    assert not any(k.startswith('trd_') for k in base)
    config = config_from_args(argparse.Namespace(**recipe))  # timm-trd's own checks, as for a -c YAML
    assert config.enabled and config.prob == prob and config.size == (size, size)
    full = recipe['img_size']
    assert size < full and (size / full) == 0.5  # the paper's area ratio, a quarter of the pixels
    assert compute_share(prob, config.size, (full, full)) == pytest.approx(share)


@pytest.mark.parametrize('name', ALL)
def test_header_cites_sources_launch_compute_and_top1(name):
    text = header(name)
    base_name = TRD[name][0] if name in TRD else name
    share, top1 = (TRD[name][3], TRD[name][4]) if name in TRD else (1.0, BASELINE_TOP1[name])
    assert ('arXiv 2110.00476' in text) == (base_name != 'resnet50_90ep')
    if name in TRD or base_name == 'resnet50_90ep':
        assert 'arXiv 2112.00954' in text
    assert 'Launch assumed:' in text and 'GPUs x batch' in text
    assert f'{share:.3f}' in text if name in TRD else 'Compute: 1.00' in text
    assert re.search(rf'Expected top-1 .*\b{re.escape(top1)}\b', text, re.S)


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
    args = parse(module, plugin, monkeypatch, '-c', str(RECIPES / f'{name}.yaml'), '--data-dir', str(tmp_path))
    for key, value in recipe.items():
        assert getattr(args, key) == value, key
    assert args.smoothing == 0.0 and module.parser.get_default('smoothing') == 0.0  # the YAML replaced 0.1
    assert plugin.config.enabled == (name in TRD)
    if name in TRD:
        assert plugin.config.prob == TRD[name][1] and plugin.config.size == (TRD[name][2],) * 2
        assert plugin.schedule.total_epochs == recipe['epochs']


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
        cmd, processes = [sys.executable, '-m', 'timm_trd', '-c', str(recipe), '--data-dir', str(folder64),
                          *TINY, *repeats, *out], 1
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    prob = TRD[name][1]
    batches = 64 // 8 // processes
    reduced = int(prob * batches + 0.5)
    assert f'TRD: epoch 0: {reduced}/{batches} batches at 32x32' in log
    if processes == 2:
        assert 'all 2 ranks served the same sizes in the same order' in log
    with open(tmp_path / 'tiny' / 'summary.csv') as f:
        (row,) = list(csv.DictReader(f))
    assert int(row['train_trd_reduced_batches']) == reduced
    assert float(row['train_trd_compute']) == pytest.approx(1 - reduced / batches * 0.75, abs=0.01)
