"""``timm-trd-train``: run the user's timm train.py with TRD attached.

    timm-trd-train [--train-script PATH] <train.py arguments>

train.py is found at ``--train-script``, else ``$TIMM_TRAIN_SCRIPT``, else ``./train.py``. It is imported
as a module (its ``if __name__ == '__main__'`` block does not run), the hooks are installed, and its
``main()`` runs with every other argument, unchanged. Works the same under ``torchrun``.
"""

import importlib.util
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .config import TRDConfigError
from .hooks import install

ENV_VAR = 'TIMM_TRAIN_SCRIPT'
HOW_TO_GET = (
    "timm's pip package does not ship train.py; take it from a checkout of pytorch-image-models "
    "(git clone https://github.com/huggingface/pytorch-image-models) and pass --train-script "
    "pytorch-image-models/train.py, or set $TIMM_TRAIN_SCRIPT")


def split_train_script(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """Take ``--train-script PATH`` (or ``--train-script=PATH``) out of ``argv``."""
    rest, script = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == '--train-script':
            if i + 1 >= len(argv):
                raise TRDConfigError('--train-script needs a path to train.py')
            script = argv[i + 1]
            i += 2
            continue
        if arg.startswith('--train-script='):
            script = arg.split('=', 1)[1]
        else:
            rest.append(arg)
        i += 1
    return script, rest


def find_train_script(explicit: Optional[str] = None) -> Path:
    """Resolve train.py from ``--train-script``, ``$TIMM_TRAIN_SCRIPT`` or ``./train.py``, in that order."""
    for origin, candidate in (('--train-script', explicit), (f'${ENV_VAR}', os.environ.get(ENV_VAR))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise TRDConfigError(f'{origin} points to {candidate}, which is not a file; {HOW_TO_GET}')
            return path.resolve()
    local = Path('train.py')
    if local.is_file():
        return local.resolve()
    raise TRDConfigError(f'no train.py found (no --train-script, no ${ENV_VAR}, no ./train.py); {HOW_TO_GET}')


def load_train_module(path: Path, name: str = 'timm_train_script'):
    """Import train.py as a module, with its folder first on sys.path as ``python train.py`` would have it."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        script, rest = split_train_script(argv)
        path = find_train_script(script)
        module = load_train_module(path)
        install(module)
        sys.argv = [str(path)] + rest
        module.main()
    except TRDConfigError as e:
        print(f'timm-trd: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
