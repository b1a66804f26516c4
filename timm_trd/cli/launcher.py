"""``timm-trd-train``: run the user's timm train.py with TRD attached.

    timm-trd-train [--train-script PATH] <train.py arguments>
    timm-trd-train --demo [--train-script PATH] [train.py arguments]
    timm-trd-train --get-train-script [DIR]
    timm-trd-train --help

train.py is found at ``--train-script``, else ``$TIMM_TRAIN_SCRIPT``, else ``./train.py``, else the copy that
``--get-train-script`` saved for the installed timm (``$XDG_CACHE_HOME/timm-trd/train-<timm version>.py``,
``~/.cache`` without ``$XDG_CACHE_HOME``). It is imported as a module (its ``if __name__ == '__main__'``
block does not run), the hooks are installed, and its ``main()`` runs with every other argument, unchanged.
Works the same under ``torchrun``.

``--get-train-script`` downloads the train.py of the installed timm's release tag (timm's pip package does not
ship it, and the main branch's train.py may be ahead of, or behind, the release you run). The download is
checked statically (parsed, never run) for the module-level names timm-trd hooks into
(:data:`timm_trd.plugin.hooks.REQUIRED`) before it is saved (:mod:`timm_trd.cli.train_script`). ``$TIMM_TRD_TRAIN_SCRIPT_URL`` replaces the base URL
(the raw files of timm's GitHub repository), e.g. for a mirror.

``--demo`` is a first run on generated images with nothing to prepare (:mod:`timm_trd.cli.demo`).

``--help`` prints timm-trd's own options first (the ``--trd-*`` ones and the launcher's) and where train.py is
looked for; when a train.py is found, where it was found and then train.py's own help follow.
"""

import argparse
import sys
from typing import List, Optional

from ..errors import TRDConfigError
from ..plugin.config import add_arguments
from ..plugin.hooks import install
from .train_script import (GET_OPTION, URL_ENV_VAR, base_url, check_train_script, find_train_script,
                           get_train_script, load_train_module, locate_train_script, search_order,
                           split_train_script)

DEMO_OPTION = '--demo'


# -- --help ---------------------------------------------------------------------------------------

def launcher_parser() -> argparse.ArgumentParser:
    """timm-trd's own options (the --trd-* ones as train.py will know them, then the launcher's) and where
    train.py is looked for: the first screen of ``--help``, before train.py's help."""
    parser = argparse.ArgumentParser(
        prog='timm-trd-train',
        usage=f'timm-trd-train [--train-script PATH] [train.py and --trd-* options]\n'
              f'       timm-trd-train {DEMO_OPTION} [--train-script PATH] [train.py options]\n'
              f'       timm-trd-train {GET_OPTION} [DIR]',
        description="Run timm's train.py with Temporally Resolution Decrement (TRD) attached. Every argument\n"
                    "except the launcher's own goes to train.py unchanged; works the same under torchrun\n"
                    "(torchrun ... -m timm_trd ...). timm-trd's options first, then train.py's.",
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    add_arguments(parser)  # the --trd-* options, and --train-script
    for action in parser._actions:
        if action.dest == 'train_script':
            action.help = 'the train.py to run (default: the first found of the places below)'
    group = parser.add_argument_group('launcher')
    group.add_argument('-h', '--help', action='store_true', help="this help, then train.py's when one is found")
    group.add_argument(
        DEMO_OPTION, action='store_true',
        help='a first TRD run with nothing to prepare: a generated toy folder (made in the cache when missing), '
             'ResNet-18 for 2 epochs at 64 px with half of the batches at 32 px, on CUDA if present else the CPU, '
             'through the train.py found (downloaded when there is none); train.py options after it override '
             "the demo's")
    group.add_argument(
        GET_OPTION, metavar='DIR', nargs='?',
        help="download the train.py of the installed timm's release into DIR (default: the cache, see below), "
             "check that it has the names timm-trd hooks into, and exit")
    order = '\n'.join(f'  {i}. {where}: {what}' for i, (where, what) in enumerate(search_order(), 1))
    parser.epilog = (
        f'train.py is the first of:\n{order}\n'
        f'{GET_OPTION} downloads {base_url()}/v<timm version>/train.py\n'
        f'(the base URL is ${URL_ENV_VAR} where set).')
    return parser


def hide_trd_options(parser: argparse.ArgumentParser) -> None:
    """Leave timm-trd's options out of train.py's help (they were printed first), with a pointer in their place."""
    for action in parser._actions:
        if action.dest.startswith('trd_') or action.dest == 'train_script':
            action.help = argparse.SUPPRESS
    for group in parser._action_groups:
        if any(action.dest == 'trd_prob' for action in group._group_actions):
            group.description = "the --trd-* options and --train-script: see timm-trd's options above"


def print_help(rest: List[str], explicit: Optional[str]) -> None:
    """timm-trd's options and where train.py was found; then train.py's own help (which exits) when found."""
    try:
        found, problem = locate_train_script(explicit), None
        if found is not None:
            check_train_script(found[0])
    except TRDConfigError as e:
        found, problem = None, str(e)
    launcher_parser().print_help()
    if found is None:
        if problem is None:
            try:
                find_train_script(explicit)
            except TRDConfigError as e:
                problem = str(e)
        print(f'\ntimm-trd: {problem}')
        sys.exit(0)
    path, origin = found
    print(f"\ntrain.py: {path} (from {origin}); its own options follow.\n", flush=True)
    module = load_train_module(path)
    install(module)
    hide_trd_options(module.parser)
    module.parser.prog = 'timm-trd-train'
    sys.argv = [str(path)] + rest
    module.main()  # train.py's parser prints its help and exits


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == GET_OPTION:
            get_train_script(argv[1:])
            return
        if GET_OPTION in argv:
            raise TRDConfigError(f'{GET_OPTION} [DIR] is a command of its own: run it without other arguments')
        script, rest = split_train_script(argv)
        if '-h' in rest or '--help' in rest:
            print_help([arg for arg in rest if arg != DEMO_OPTION], script)
            return
        if DEMO_OPTION in rest:
            from .demo import run as run_demo
            run_demo([arg for arg in rest if arg != DEMO_OPTION], script)
            return
        path = find_train_script(script)
        check_train_script(path)
        module = load_train_module(path)
        install(module)
        sys.argv = [str(path)] + rest
        module.main()
    except TRDConfigError as e:
        print(f'timm-trd: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
