"""The GPU check's command line: ``experiments/gpu_check.sh`` runs this folder (``python experiments/gpu_check
ARGS``); ``python -m gpu_check ARGS`` with experiments/ on the path does the same. The check is described in
__init__.py, and ``--help`` prints it."""

import sys
from pathlib import Path

if not __package__:  # run as a folder: sys.path[0] is this folder; its parent instead, so the modules import as
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # gpu_check.* and their names shadow nothing

import argparse  # noqa: E402
import os  # noqa: E402

import gpu_check  # noqa: E402
from gpu_check.plan import CALL_PHASES, DEVICE_CALLS, PHASES, PROFILES, run_call_text  # noqa: E402
from gpu_check.prepare import DEFAULT_IMAGENETTE, ROOT, prepare  # noqa: E402
from gpu_check.runner import Check  # noqa: E402
from gpu_check.setup_phase import setup_child  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=gpu_check.__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=gpu_check.__doc__)
    ap.add_argument('--prepare', action='store_true', help='fill .gpu_check/ here (needs pip to reach PyPI)')
    ap.add_argument('--images', default=os.environ.get('GPU_CHECK_IMAGES'),
                    help='(--prepare) a folder of real photos, e.g. ImageNet train/ ($GPU_CHECK_IMAGES)')
    ap.add_argument('--jpeg-count', type=int, default=400, help='(--prepare) photos to carry at most')
    ap.add_argument('--jpeg-mb', type=float, default=40, help='(--prepare) their size at most, MiB')
    ap.add_argument('--imagenette', default=str(DEFAULT_IMAGENETTE),
                    help='(--prepare) imagenette-224.tar (default: ../shared/datasets/ beside the checkout)')
    ap.add_argument('--acc-size', type=int, default=160, help="(--prepare) the copy's shorter side, px")
    ap.add_argument('--acc-quality', type=int, default=80, help="(--prepare) the copy's JPEG quality")
    ap.add_argument('--acc-train-per-class', type=int, default=700, help='(--prepare) training images per class')
    ap.add_argument('--acc-val-per-class', type=int, default=150, help='(--prepare) validation images per class')
    ap.add_argument('--timm-version', default=None, help='(--prepare) the timm wheel (default: the installed timm)')
    ap.add_argument('--train-script', default=None,
                    help="timm's train.py (default: .gpu_check/train.py, else $TIMM_TRAIN_SCRIPT)")
    ap.add_argument('--call', default='all', choices=CALL_PHASES,
                    help='1: accuracy; 2: multi-process, torch.compile, speed; bench: bench_trd.py; all (default)')
    ap.add_argument('--dry-run', action='store_true', help='CPU, tiny model, a few steps: the same phases')
    ap.add_argument('--phases', nargs='+', default=None, choices=PHASES, help="run only these of the call's phases")
    ap.add_argument('--out', default=os.environ.get('OUT') or str(ROOT / 'outputs' / 'gpu_check'),
                    help='results folder (default: $OUT, else outputs/gpu_check)')
    ap.add_argument('--work', default=None, help='scratch folder (default: outputs/gpu_check_work, emptied)')
    ap.add_argument('--workers', type=int, default=None, help='loader workers (default: all CPU cores; dry run 1)')
    ap.add_argument('--deadline', type=float, default=None,
                    help="seconds for all phases (default: the sum of the phases' budgets)")
    ap.add_argument('--setup-child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--profile', default='gpu', choices=PROFILES, help=argparse.SUPPRESS)
    ap.add_argument('--jpeg-src', default='', help=argparse.SUPPRESS)
    ap.add_argument('--acc-src', default='', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = str(ROOT / 'outputs' / 'gpu_check_work')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.setup_child:
        return setup_child(Path(args.work), args.profile, args.jpeg_src, args.acc_src)
    if args.prepare:
        return prepare(args, DEVICE_CALLS, run_call_text)
    return Check(args).run()



if __name__ == '__main__':
    main()
