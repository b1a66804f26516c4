import itertools
import sys
from pathlib import Path
from typing import Optional

import pytest

from timm_trd.errors import TRDConfigError
from timm_trd.cli.train_script import load_train_module, locate_train_script
from timm_trd.data.sampler import loader_path_unavailable
from timm_trd.data.toy_data import make_image_folder

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


GET_TRAIN_SCRIPT = 'timm-trd-train --get-train-script'
NO_TRAIN_SCRIPT = (f"needs timm's train.py: run `{GET_TRAIN_SCRIPT}` once (the tests then find it, as timm-trd-train "
                   f"does; or set TIMM_TRAIN_SCRIPT)")


def found_train_script() -> Optional[Path]:
    """timm's real train.py, looked for as timm-trd-train looks ($TIMM_TRAIN_SCRIPT, ./train.py, the copy
    ``timm-trd-train --get-train-script`` saved); None when there is none. $TIMM_TRAIN_SCRIPT naming no file is
    an error, never a skip."""
    try:
        found = locate_train_script()
    except TRDConfigError as e:
        pytest.fail(str(e))
    return found[0] if found else None


def train_script_or_skip() -> Path:
    path = found_train_script()
    if path is None:
        pytest.skip(NO_TRAIN_SCRIPT)
    return path


@pytest.fixture
def train_script():
    """timm's real train.py (see :func:`found_train_script`); the end-to-end tests skip without one."""
    return train_script_or_skip()
