"""timm-trd-eval tests at the size the checkpoint was trained and validated at (train.py's args in it), says
which size it used, and says when a shape bias rests on few decisions or on a model near chance."""
import argparse

import pytest
import torch
from timm.models import create_model

from timm_trd.evaluation import evaluate as ev
from timm_trd.evaluation.bias_caveat import bias_caveat

COMMON = dict(recal_batches=0, probe_images=8, workers=0, batch_size=8, blur=(0.02,), shuffle=(2,))


def saved(tmp_path, **args):
    """A checkpoint as train.py saves it: weights and its args (here: the size options given)."""
    torch.manual_seed(0)
    path = tmp_path / 'last.pth.tar'
    full = {**dict(model='test_resnet', num_classes=4, img_size=None, input_size=None, crop_pct=None), **args}
    torch.save({'state_dict': create_model('test_resnet', num_classes=4).state_dict(), 'epoch': 1, 'version': 2,
                'args': argparse.Namespace(**full)}, path)
    return path


@pytest.mark.parametrize('args,size,said', [
    (dict(img_size=24), 24, "24 px, the size it was trained and validated at (train.py's --img-size 24 in the "
                            "checkpoint; --img-size overrides it)"),
    (dict(input_size=[3, 20, 20], crop_pct=1.0), 20, "train.py's --input-size 3 20 20 --crop-pct 1 in the checkpoint"),
    (dict(), 160, "the model's default (the checkpoint holds no train.py --img-size / --input-size"),
])
def test_the_test_size_is_the_checkpoints_training_size(image_folder, tmp_path, args, size, said):
    result = ev.evaluate_checkpoint(saved(tmp_path, **args), image_folder, 'test_resnet', **COMMON)
    assert result['test_size'] == size and said in result['size_source']
    assert f'test size: {result["size_source"]}' in ev.format_report(result)
    if 'crop_pct' in args:
        assert result['crop_pct'] == 1.0


def test_img_size_overrides_the_checkpoints_size(image_folder, tmp_path):
    result = ev.evaluate_checkpoint(saved(tmp_path, img_size=24), image_folder, 'test_resnet', img_size=32, **COMMON)
    assert result['test_size'] == 32 and result['size_source'] == '32 px, from --img-size'


def test_a_bias_from_few_decisions_of_a_model_near_chance_gets_a_caveat(image_folder, tmp_path):
    result = ev.evaluate_checkpoint(saved(tmp_path, img_size=24), image_folder, 'test_resnet', **COMMON)
    conflict = result['probes']['cue_conflict']
    table = ev.format_table(result)
    assert f'= {conflict["shape_bias"]:.3f}, from {conflict["counted"]} decisions' in table
    assert conflict['counted'] <= 8 and conflict['caveat'] in table
    assert conflict['caveat'].startswith(f'caveat: the shape bias says little: it rests on {conflict["counted"]} '
                                         f'decisions only (95% interval ')


def test_bias_caveat_thresholds():
    assert bias_caveat(60, 60, 80.0, 10.0, 'top-1') is None  # 120 decisions, 8x chance
    few = bias_caveat(6, 4, 80.0, 10.0, 'top-1')
    assert few.startswith('caveat: the shape bias says little: it rests on 10 decisions only (95% interval 0.31-0.83')
    chance = bias_caveat(300, 200, 12.0, 10.0, 'top-1 on the probe images')
    assert chance == ('caveat: the shape bias says little: the model is near chance (top-1 on the probe images 12.0%, '
                      'chance 10.0%), so the bias measures its guesses, not what it learned')
