"""scripts/reproduce.py's evaluation and report, on generated images (the training runs need timm's train.py
and the shared datasets, so they are exercised by running the script, not here)."""

import csv
import importlib.util
import json

import pytest
import torch
from timm.data import create_dataset, create_loader
from timm.models import create_model

from conftest import TESTS

SCRIPT = TESTS.parent / 'scripts' / 'reproduce.py'


@pytest.fixture(scope='module')
def reproduce():
    spec = importlib.util.spec_from_file_location('reproduce_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bn_buffers(model):
    return [t.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def test_bn_recalibration_replaces_the_running_statistics(reproduce, image_folder, tmp_path):
    """Same weights, different BatchNorm buffers before: the same buffers after recalibrating on the same batches."""
    loader = create_loader(create_dataset('', root=str(image_folder), split='train', is_training=True),
                           input_size=(3, 32, 32), batch_size=8, is_training=True, use_prefetcher=False, num_workers=0)
    models = []
    for skew in (0.0, 3.0):
        torch.manual_seed(0)
        model = create_model('test_resnet', num_classes=10)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(skew)
                module.num_batches_tracked.fill_(1000)  # as after training
        models.append(model)
    before = [_bn_buffers(m) for m in models]
    assert not all(torch.equal(a, b) for a, b in zip(*before))
    for model in models:
        reproduce.recalibrate_bn(model, loader, batches=3)
    after = [_bn_buffers(m) for m in models]
    assert all(torch.allclose(a, b) for a, b in zip(*after))
    assert not all(torch.allclose(a, b) for a, b in zip(before[1], after[1]))
    assert not models[0].training


def test_evaluate_checkpoint_at_other_sizes(reproduce, image_folder, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': create_model('test_resnet', num_classes=10).state_dict()}, path)
    spec = {'model': 'test_resnet', 'extra': ['--scale', '0.35', '1', '--crop-pct', '1.0'], 'batch_size': 8}
    for size, recal in ((32, 0), (16, 0), (32, 2)):
        top1 = reproduce.evaluate(path, spec, image_folder, size, recal_batches=recal)
        assert 0.0 <= top1 <= 100.0 and (top1 * 16 / 100) == pytest.approx(round(top1 * 16 / 100))  # 16 val images


def test_report_tables_mean_and_spread_per_config(reproduce, tmp_path):
    base = {'dataset': 'cifar10', 'full': 32, 'reduced': 16, 'epochs': 1, 'train_per_class': 10}
    results = [
        dict(base, config='baseline', prob=0.0, full_res_epochs=0, seed=0, top1=50.0, top1_at_16=20.0,
             top1_at_24=40.0, top1_bn_recal=51.0, train_seconds=100.0, compute=1.0),
        dict(base, config='baseline', prob=0.0, full_res_epochs=0, seed=1, top1=52.0, top1_at_16=22.0,
             top1_at_24=42.0, top1_bn_recal=53.0, train_seconds=110.0, compute=1.0),
        dict(base, config='trd50', prob=0.5, full_res_epochs=0, seed=0, top1=49.0, top1_at_16=30.0,
             top1_at_24=45.0, top1_bn_recal=50.0, train_seconds=63.0, compute=0.649),
    ]
    reproduce.report(json.loads(json.dumps(results)), tmp_path)
    table = (tmp_path / 'results.md').read_text().splitlines()
    baseline_row = next(line for line in table if line.startswith('| baseline'))
    trd_row = next(line for line in table if line.startswith('| trd50'))
    assert '| 2 | 51.00 +- 1.41 | 21.00 +- 1.41 | 41.00 +- 1.41 | 52.00 +- 1.41 | 105 | 1.000 | 1.000 |' in baseline_row
    assert '| 1 | 49.00 +- nan |' in trd_row and '| 63 | 0.600 | 0.649 |' in trd_row
    assert table[0].startswith('Machine: ') and '3 runs' in table[0]
    with open(tmp_path / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['config'], r['seed']) for r in rows] == [('baseline', '0'), ('baseline', '1'), ('trd50', '0')]
