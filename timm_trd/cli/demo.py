"""``timm-trd-train --demo``: a first TRD run through train.py, with nothing to prepare.

    timm-trd-train --demo [--train-script PATH] [train.py arguments]

Writes the generated toy folder of :mod:`timm_trd.data.toy_data` into the cache (``$XDG_CACHE_HOME/timm-trd/toy-data``,
``~/.cache`` without it) when it is missing, finds train.py as the launcher does (``--train-script``,
``$TIMM_TRAIN_SCRIPT``, ``./train.py``, the ``--get-train-script`` copy) or downloads the one of the installed
timm (as ``--get-train-script`` does, with its one-line error offline), and trains ResNet-18 for 2 epochs at
64 px with half of the batches at 32 px, on CUDA when torch sees a GPU, else on the CPU. It ends with what TRD
did (reduced batches, compute saved) and where train.py wrote its outputs.

The demo's settings are train.py arguments put before the user's, so any of them can be overridden
(``--demo --epochs 1 --model resnet10t``); a setting the train.py in use does not know (the tests' stand-in
``tests/mini_train.py`` has no ``--device`` or ``--experiment``) is left out, and the log says so.
"""

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from . import train_script
from ..errors import TRDConfigError
from ..plugin.hooks import install
from ..data.toy_data import CLASSES, make_image_folder

TOY_SIZE, TOY_TRAIN_PER_CLASS, TOY_VAL_PER_CLASS = 64, 64, 16
OUTPUT_BASE = Path('output') / 'train'  # train.py's own default for --output


def toy_folder() -> Path:
    """The demo's image folder in the cache, written once (to a temporary name, then renamed: a run that is
    interrupted never leaves a half-written folder where the next one looks)."""
    root = train_script.cache_dir() / 'toy-data'
    if (root / 'train').is_dir() and (root / 'val').is_dir():
        print(f'timm-trd demo: data: {root} (the generated toy folder, already there)', flush=True)
        return root
    partial = root.with_name(f'.toy-data.{os.getpid()}.part')
    shutil.rmtree(partial, ignore_errors=True)
    make_image_folder(partial, TOY_SIZE, TOY_TRAIN_PER_CLASS, TOY_VAL_PER_CLASS)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    print(f'timm-trd demo: data: wrote {len(CLASSES) * TOY_TRAIN_PER_CLASS} training and '
          f'{len(CLASSES) * TOY_VAL_PER_CLASS} validation images of {TOY_SIZE}x{TOY_SIZE} px ({len(CLASSES)} shapes on '
          f'random textures) to {root}', flush=True)
    return root


def find_or_download_train_script(explicit: Optional[str]) -> Tuple[Path, str]:
    """train.py and where it came from: found as the launcher finds it, else downloaded as --get-train-script."""
    found = train_script.locate_train_script(explicit)
    if found is not None:
        return found
    print(f'timm-trd demo: no train.py found; downloading the one of timm {train_script.timm_version()} '
          f'(as timm-trd-train {train_script.GET_OPTION})', flush=True)
    try:
        path, _ = train_script.fetch_train_script()
    except TRDConfigError as e:
        raise TRDConfigError(
            f'{e}; or, offline in a checkout of timm-trd, run the demo with the tests\' stand-in: '
            f'timm-trd-train --demo --train-script tests/mini_train.py') from None
    return path, f'downloaded now, as {train_script.GET_OPTION}'


def best_device() -> str:
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def demo_arguments(known: set, data: Path, run_dir: Path, device: str) -> Tuple[List[str], List[str]]:
    """The demo's train.py arguments, and the options left out because this train.py does not know them."""
    wanted = [('--data-dir', str(data)), ('--model', 'resnet18'), ('--num-classes', str(len(CLASSES))),
              ('--img-size', str(TOY_SIZE)), ('--trd-prob', '0.5'), ('--trd-size', str(TOY_SIZE // 2)),
              ('--epochs', '2'), ('-b', '16'), ('--workers', '2'), ('--device', device)]
    if '--experiment' in known:  # train.py writes to OUTPUT/EXPERIMENT
        wanted += [('--output', str(run_dir.parent)), ('--experiment', run_dir.name)]
    else:
        wanted += [('--output', str(run_dir)), ('--experiment', None)]
    args = [item for option, value in wanted if option in known and value is not None for item in (option, value)]
    left_out = [option for option, value in wanted if option not in known]
    return args, left_out


class _ToConsoleIfUnhandled(logging.StreamHandler):
    """TRD's log lines on the console also under a train.py that sets up no logging (train.py's own
    ``setup_default_logging`` adds a root handler, and then this one stays silent, so nothing prints twice)."""

    def emit(self, record):
        if not logging.getLogger().handlers:
            super().emit(record)


def _record_epochs(module) -> list:
    """Keep what each epoch returned (the train metrics, with TRD's figures in them)."""
    rows, epoch_fn = [], module.train_one_epoch

    def train_one_epoch(*a, **kw):
        metrics = epoch_fn(*a, **kw)
        rows.append(dict(metrics or {}))
        return metrics

    module.train_one_epoch = train_one_epoch
    return rows


def what_trd_did(plugin, rows: list) -> str:
    trd = [row for row in rows if 'trd_batches' in row]
    if not plugin.enabled or not trd:
        return 'TRD was off (--trd-prob 0): every batch at full size'
    reduced = sum(int(row['trd_reduced_batches']) for row in trd)
    batches = sum(int(row['trd_batches']) for row in trd)
    saved = float(trd[-1]['trd_saved_cum'])
    (rh, rw), (fh, fw) = plugin.loader.reduced_hw, plugin.loader.full_hw
    how = 'FLOPs counted' if plugin.cost.source == 'flops' else 'pixel-area ratio'
    return (f'TRD trained {reduced}/{batches} batches at {rh}x{rw} instead of {fh}x{fw} over {len(trd)} '
            f'epoch{"s" if len(trd) != 1 else ""} '
            f'({plugin.loader.path} path): {1 - saved:.3f} of the compute of an all-{fh}x{fw} run, '
            f'{100 * saved:.1f}% saved ({how})')


def run(argv: List[str], explicit_script: Optional[str]) -> None:
    """Run the demo; ``argv`` are extra train.py arguments (they override the demo's)."""
    start = time.monotonic()
    path, origin = find_or_download_train_script(explicit_script)
    module = train_script.load_train_module(path)
    stand_in = getattr(module, 'STAND_IN', None)  # tests/mini_train.py says what it is; timm's train.py has none
    print(f'timm-trd demo: train.py: {path} ({origin})' + (f': {stand_in}' if stand_in else ''), flush=True)
    data = toy_folder()
    plugin = install(module)
    rows = _record_epochs(module)
    known = set(module.parser._option_string_actions)
    run_dir = OUTPUT_BASE / time.strftime('trd-demo-%Y%m%d-%H%M%S')
    device = best_device()
    args, left_out = demo_arguments(known, data, run_dir, device)
    if left_out:
        print(f'timm-trd demo: {path.name} has no {", ".join(left_out)}; left out', flush=True)
    print(f'timm-trd demo: timm-trd-train {" ".join(args + argv)}', flush=True)
    logger = logging.getLogger('timm_trd')
    handler = _ToConsoleIfUnhandled(sys.stderr)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sys.argv = [str(path)] + args + argv
    try:
        module.main()
    finally:
        logger.removeHandler(handler)
    if plugin.args is not None:  # the outputs are where the final arguments put them
        output, experiment = getattr(plugin.args, 'output', '') or str(OUTPUT_BASE), getattr(plugin.args, 'experiment', '')
        run_dir = Path(output) / experiment if experiment else Path(output)
    print(f'timm-trd demo: done in {time.monotonic() - start:.0f} s on {device}. {what_trd_did(plugin, rows)}')
    files = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    print(f'timm-trd demo: outputs in {run_dir}: {", ".join(files) if files else "(none written)"}')
    print('timm-trd demo: on your data: timm-trd-train --data-dir DIR --model resnet50 --trd-prob 0.5 --trd-size 112 '
          '(README: "On your data")')
