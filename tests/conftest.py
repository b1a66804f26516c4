import itertools
import os
import sys
from pathlib import Path

import pytest

from timm_trd.launcher import load_train_module
from timm_trd.sampler import loader_path_unavailable
from timm_trd.toy_data import make_image_folder

TESTS = Path(__file__).resolve().parent
MINI_TRAIN = TESTS / 'mini_train.py'
_module_ids = itertools.count()

# the data paths to test: the loader path only where the installed timm has the scheduled sampler
PATHS = [pytest.param('loader', marks=pytest.mark.skipif(
    loader_path_unavailable() is not None, reason=f'loader path: {loader_path_unavailable()}')), 'device']


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    """A generated image folder: 4 classes x 24 train / 4 val images of 40x40 pixels."""
    return make_image_folder(tmp_path_factory.mktemp('images'), size=40, train_per_class=24, val_per_class=4)


@pytest.fixture
def mini_train():
    """A fresh import of tests/mini_train.py (hooks mutate the module, so each test gets its own)."""
    name = f'mini_train_{next(_module_ids)}'
    module = load_train_module(MINI_TRAIN, name=name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
def train_script():
    """timm's real train.py, from $TIMM_TRAIN_SCRIPT; the end-to-end tests skip without one."""
    path = os.environ.get('TIMM_TRAIN_SCRIPT')
    if not path:
        pytest.skip("needs timm's train.py: set TIMM_TRAIN_SCRIPT to a pytorch-image-models checkout's train.py")
    if not Path(path).is_file():
        pytest.fail(f'TIMM_TRAIN_SCRIPT={path} is not a file')
    return Path(path)
