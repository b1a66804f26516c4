"""Where train.py comes from: found (``--train-script``, ``$TIMM_TRAIN_SCRIPT``, ``./train.py``, the cache),
downloaded (``timm-trd-train --get-train-script``), checked for the names the plugin hooks into, and loaded as a
module without running its ``__main__`` block.

timm's pip package does not ship train.py. ``--get-train-script`` downloads the train.py of the installed timm's
release tag and checks it statically (parsed, never run) for the module-level names timm-trd hooks into
(:data:`timm_trd.plugin.hooks.REQUIRED`) before it is saved. ``$TIMM_TRD_TRAIN_SCRIPT_URL`` replaces the base URL
(the raw files of timm's GitHub repository), e.g. for a mirror. Used by the launcher and the demo alike.
"""

import ast
import importlib.util
import os
import re
import sys
import urllib.error
import urllib.request
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from ..errors import TRDConfigError

ENV_VAR = 'TIMM_TRAIN_SCRIPT'
URL_ENV_VAR = 'TIMM_TRD_TRAIN_SCRIPT_URL'
DEFAULT_BASE_URL = 'https://raw.githubusercontent.com/huggingface/pytorch-image-models'
REPO_URL = 'https://github.com/huggingface/pytorch-image-models'
GET_OPTION = '--get-train-script'
DOWNLOAD_TIMEOUT_S = 30
HOW_TO_GET = (
    f"timm's pip package does not ship train.py; run timm-trd-train {GET_OPTION} to download the one of your "
    f"timm release, or take it from a checkout of pytorch-image-models ({REPO_URL}) and pass --train-script "
    f"pytorch-image-models/train.py, or set ${ENV_VAR}")


# -- where train.py comes from --------------------------------------------------------------------

def timm_version() -> str:
    import timm
    return timm.__version__


def release_tag(version: str) -> Optional[str]:
    """The git tag of a timm release (``1.0.31`` -> ``v1.0.31``); None for a development or local version,
    which has no tag of its own."""
    return f'v{version}' if re.fullmatch(r'\d+(\.\d+)*((a|b|rc)\d+)?', version) else None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/timm-trd``, or ``~/.cache/timm-trd``."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'timm-trd'


def cached_script_name(version: str) -> str:
    return f'train-{version}.py'


def cached_train_script(version: Optional[str] = None) -> Path:
    """Where ``--get-train-script`` saves the installed timm's train.py (it may not exist)."""
    return cache_dir() / cached_script_name(version or timm_version())


def base_url() -> str:
    """Where release files are downloaded from: ``$TIMM_TRD_TRAIN_SCRIPT_URL``, else timm's GitHub raw files."""
    return (os.environ.get(URL_ENV_VAR) or DEFAULT_BASE_URL).rstrip('/')


def train_script_url(version: str) -> str:
    return f'{base_url()}/{release_tag(version)}/train.py'


def search_order() -> List[Tuple[str, str]]:
    """The places the launcher looks for train.py, in order, as (where, what is there now)."""
    env = os.environ.get(ENV_VAR)
    try:
        cached = cached_train_script()
        cached_text = str(cached) + ('' if cached.is_file() else f' (absent: run timm-trd-train {GET_OPTION})')
    except Exception as e:  # the help must print even where timm cannot be imported
        cached_text = f'(unknown: {e})'
    return [
        ('--train-script PATH', 'the path given'),
        (f'${ENV_VAR}', env if env else '(not set)'),
        ('./train.py', str(Path('train.py').resolve()) + ('' if Path('train.py').is_file() else ' (absent)')),
        (f'the {GET_OPTION} cache', cached_text),
    ]


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


def locate_train_script(explicit: Optional[str] = None) -> Optional[Tuple[Path, str]]:
    """train.py and where it was found: ``--train-script``, ``$TIMM_TRAIN_SCRIPT``, ``./train.py`` or the cache of
    ``--get-train-script``, in that order; None when none of them has one. A ``--train-script`` or
    ``$TIMM_TRAIN_SCRIPT`` that names no file raises (it is never passed over)."""
    for origin, candidate in (('--train-script', explicit), (f'${ENV_VAR}', os.environ.get(ENV_VAR))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise TRDConfigError(f'{origin} points to {candidate}, which is not a file; {HOW_TO_GET}')
            return path.resolve(), origin
    local = Path('train.py')
    if local.is_file():
        return local.resolve(), './train.py'
    cached = cached_train_script()
    if cached.is_file():
        return cached.resolve(), f'the {GET_OPTION} cache'
    return None


def find_train_script(explicit: Optional[str] = None) -> Path:
    """The train.py :func:`locate_train_script` finds; raises, naming the download command, when there is none."""
    found = locate_train_script(explicit)
    if found is not None:
        return found[0]
    version = timm_version()
    cached = cached_train_script(version)
    others = sorted(p.name for p in cache_dir().glob(cached_script_name('*')))
    stale = f'; {cache_dir()} holds {", ".join(others)}, not the train.py of timm {version}' if others else ''
    raise TRDConfigError(
        f'no train.py found (no --train-script, no ${ENV_VAR}, no ./train.py, no {cached}{stale}); {HOW_TO_GET}')


def check_train_script(path: Path) -> None:
    """Refuse, before it is imported (so nothing in it runs), a file that is not a train.py timm-trd can attach
    to: not readable as text, not Python (``setup.cfg``), or without the seams (read and parsed, never run)."""
    try:
        source = Path(path).read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise TRDConfigError(f'cannot read {path} as a Python train.py ({e}); {HOW_TO_GET}') from None
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise TRDConfigError(f'{path} is not a Python file (line {e.lineno}: {e.msg}), so not timm\'s train.py; '
                             f'{HOW_TO_GET}') from None
    if any(isinstance(node, ast.ImportFrom) and any(a.name == '*' for a in node.names) for node in ast.walk(tree)):
        return  # a star import may bind the seams: the check after the import decides
    missing = [name for name in required_seams() if name not in module_level_names(source)]
    if missing:
        raise TRDConfigError(f'{path} is not timm\'s train.py (it lacks {", ".join(missing)}); {HOW_TO_GET}')


def load_train_module(path: Path, name: str = 'timm_train_script'):
    """Import train.py as a module, with its folder first on sys.path as ``python train.py`` would have it.
    Any file name works (``train``, ``train.py.orig``): it is read as Python source."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path, loader=SourceFileLoader(name, str(path)))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- --get-train-script ---------------------------------------------------------------------------

def required_seams() -> Tuple[str, ...]:
    """The module-level names a train.py needs for timm-trd to attach, asked of :mod:`timm_trd.plugin.hooks` (which
    owns the list) when needed rather than at import: ``REQUIRED``, or ``SEAMS`` where there is no ``REQUIRED``."""
    from ..plugin import hooks
    names = getattr(hooks, 'REQUIRED', None) or getattr(hooks, 'SEAMS')
    return tuple(name for name in names if name.isidentifier())


def module_level_names(source: str) -> set:
    """Names a Python source binds at module level (defs, classes, assignments, imports, also inside
    module-level ``if``/``try``), found by parsing it: nothing in it runs. Raises SyntaxError."""
    names = set()

    def visit(statements: Iterable[ast.stmt]):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split('.')[0] for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ('body', 'orelse', 'finalbody'):
                    visit(getattr(node, block, []) or [])
                for handler in getattr(node, 'handlers', []):
                    visit(handler.body)

    visit(ast.parse(source).body)
    return names


def missing_seams(source: str) -> List[str]:
    """The seams a train.py source lacks (all of them if it is not Python at all, e.g. an HTML page)."""
    try:
        names = module_level_names(source)
    except SyntaxError:
        return list(required_seams())
    return [name for name in required_seams() if name not in names]


def by_hand(version: str) -> str:
    """The ways around a failed download: a mirror (``$TIMM_TRD_TRAIN_SCRIPT_URL``), a train.py at hand, git."""
    tag = release_tag(version)
    return (f'set {URL_ENV_VAR} to a mirror of {DEFAULT_BASE_URL}, or pass --train-script PATH to a train.py you '
            f'have, or get it by hand: git clone --branch {tag} --depth 1 {REPO_URL} '
            f'and pass --train-script pytorch-image-models/train.py')


def fetch_train_script(dest_dir: Optional[str] = None, version: Optional[str] = None) -> Tuple[Path, bool]:
    """Download the train.py of timm ``version`` (default: the installed one) into ``dest_dir`` (default:
    :func:`cache_dir`) as ``train-<version>.py``, after checking it has timm-trd's seams.

    Returns (path, downloaded); a valid copy already there is kept (downloaded False). Raises TRDConfigError,
    with a one-line message that says how to do it by hand, when there is no release tag, the download fails
    or the file lacks a seam.
    """
    version = version or timm_version()
    if release_tag(version) is None:
        raise TRDConfigError(
            f'timm {version} is a development version and has no release tag to take train.py from; take it from '
            f'the main branch (git clone {REPO_URL}) and pass --train-script pytorch-image-models/train.py, '
            f'or install a timm release (pip install -U timm)')
    dest = (Path(dest_dir).expanduser() if dest_dir else cache_dir()) / cached_script_name(version)
    if dest.is_file() and not missing_seams(dest.read_text(encoding='utf-8', errors='replace')):
        return dest.resolve(), False
    url = train_script_url(version)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            source = response.read().decode('utf-8', errors='replace')
    except urllib.error.HTTPError as e:
        raise TRDConfigError(f'could not download {url} (HTTP {e.code} {e.reason}); {by_hand(version)}') from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        raise TRDConfigError(f'could not download {url} ({reason}); {by_hand(version)}') from None
    missing = missing_seams(source)
    if missing:
        raise TRDConfigError(
            f'{url} is not a train.py timm-trd can attach to (it lacks {", ".join(missing)}); nothing saved; '
            f'{by_hand(version)}')
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f'.{dest.name}.{os.getpid()}.part')
    partial.write_text(source, encoding='utf-8')
    os.replace(partial, dest)  # never leave a half-written train.py where the launcher looks
    return dest.resolve(), True


def get_train_script(argv: List[str]) -> None:
    """``--get-train-script [DIR]``: fetch, then say where the file is and how the launcher finds it."""
    if len(argv) > 1 or (argv and argv[0].startswith('-')):
        raise TRDConfigError(f'{GET_OPTION} takes at most one folder (default: {cache_dir()}), got {" ".join(argv)}')
    version = timm_version()
    path, downloaded = fetch_train_script(argv[0] if argv else None, version)
    what = f'train.py of timm {version}'
    print(f'timm-trd: saved {what} from {train_script_url(version)} to {path}' if downloaded
          else f'timm-trd: {what} is already at {path}')
    if path == cached_train_script(version).resolve():
        print(f'timm-trd-train uses it when there is no --train-script, no ${ENV_VAR} and no ./train.py')
    else:
        print(f'pass --train-script {path} (or set {ENV_VAR}={path}) to use it')
