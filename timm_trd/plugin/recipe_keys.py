"""Check the ``-c recipe.yaml`` that train.py reads, before train.py reads it.

train.py hands the YAML to ``parser.set_defaults``, which takes any key without a word, so a typo such as
``trd_porb: 0.5`` would silently train without TRD; and a missing file or a YAML that does not parse ends
in a traceback. :func:`check_recipe` turns each of these into one line that names the file and the fix.
It runs whether TRD is on or off: a misspelt key is a silent mistake in any run.
"""

import difflib
from typing import Optional

import yaml

from ..errors import TRDConfigError


def check_recipe(train_module, argv=None) -> Optional[dict]:
    """Read the ``-c`` file named in ``argv`` (default: ``sys.argv``) and reject what train.py would mishandle.

    Returns the recipe's mapping, or None when no ``-c`` was given (or the script has no ``config_parser``).
    """
    config_parser = getattr(train_module, 'config_parser', None)
    if config_parser is None:
        return None
    config_args, _ = config_parser.parse_known_args(argv)
    path = getattr(config_args, 'config', None)
    if not path:
        return None
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as e:
        raise TRDConfigError(f'-c {path}: cannot read the file ({e.strerror or e}); check the path') from None
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        at = f' at line {where.line + 1}, column {where.column + 1}' if where is not None else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise TRDConfigError(f'-c {path}: not valid YAML{at} ({problem}); fix the file') from None
    if not isinstance(recipe, dict):
        raise TRDConfigError(f'-c {path} must hold a mapping of train.py options, e.g. "trd_prob: 0.5"')
    known = {action.dest for action in train_module.parser._actions}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else '; remove it or fix its spelling'
            raise TRDConfigError(f"{path}: unknown key '{key}' (not an option of train.py or timm-trd){hint}")
    return recipe
