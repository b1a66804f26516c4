"""The package's layers import one way, and what users import stays importable.

Layers, bottom to top: ``errors`` < ``plan`` < ``data`` < ``plugin`` < ``evaluation`` and ``cli`` (side by side,
neither imports the other) < the package's own ``__init__``/``__main__``. Every import of the package's modules
(at module level and inside functions) is read from the source with :mod:`ast`, never run.
"""

import ast
import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'timm_trd'
LAYERS = {'errors': 0, 'plan': 1, 'data': 2, 'plugin': 3, 'evaluation': 4, 'cli': 4}
TOP = 5  # timm_trd/__init__.py, timm_trd/__main__.py
ENTRY_POINTS = ('timm-trd-train', 'timm-trd-eval', 'timm-trd-reduced-copy', 'timm-trd-toy-data')


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(root: Path, path: Path):
    """The package's modules that ``path`` imports (relative imports resolved), with their line numbers."""
    package = root.name
    name = module_name(root, path)
    here = name if path.name == '__init__.py' else name.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split('.')[:len(here.split('.')) - node.level + 1]
                base = '.'.join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ''
            # `from pkg import module` names a module when pkg is a package folder
            targets = [f'{base}.{alias.name}' if (root.parent / f'{base}.{alias.name}'.replace('.', '/')).with_suffix(
                '.py').exists() or (root.parent / f'{base}.{alias.name}'.replace('.', '/')).is_dir() else base
                for alias in node.names]
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + '.'):
                yield target, node.lineno


def layer(root: Path, module: str):
    parts = module.split('.')
    if len(parts) == 1 or parts[1] == '__main__':
        return TOP, ''
    return LAYERS.get(parts[1]), parts[1]


def problems(root: Path):
    """Each import that goes up (or sideways between evaluation and cli), and each import cycle, as a line."""
    found, graph = [], {}
    for path in sorted(root.rglob('*.py')):
        name = module_name(root, path)
        mine, wing = layer(root, name)
        for target, line in imported_modules(root, path):
            graph.setdefault(name, set()).add(target)
            theirs, other = layer(root, target)
            if mine is None or theirs is None:
                found.append(f'{path.relative_to(root.parent)}:{line}: {name} or {target} is in no layer')
            elif theirs > mine or (theirs == mine and wing != other and mine != TOP):
                found.append(f'{path.relative_to(root.parent)}:{line}: {name} ({wing}) imports {target} ({other})')
    # cycles among modules: depth-first search over the import graph (a package and its own modules excluded:
    # importing a module runs its package's __init__, which is no cycle of ours to avoid)
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + '.') or nxt.startswith(node + '.'):
                continue
            if state.get(nxt) == 1:
                found.append('cycle: ' + ' -> '.join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_layers_import_downwards_only_and_without_cycles():
    assert problems(PACKAGE) == []


def test_every_module_is_in_a_layer_folder():
    loose = [p.name for p in PACKAGE.glob('*.py') if p.name not in ('__init__.py', '__main__.py', 'errors.py')]
    assert loose == [], 'modules belong in a layer subpackage (plan, data, plugin, evaluation, cli)'
    for folder in [p for p in PACKAGE.rglob('*') if p.is_dir() and p.name != '__pycache__']:
        doc = ast.get_docstring(ast.parse((folder / '__init__.py').read_text()))
        assert doc and 'import' in doc, f'{folder}: its __init__ docstring says what it holds and may import'


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a data module importing the plugin, and two plan modules importing each other."""
    root = tmp_path / 'timm_trd'
    for sub in ('plan', 'data', 'plugin'):
        (root / sub).mkdir(parents=True)
        (root / sub / '__init__.py').write_text('')
    (root / '__init__.py').write_text('')
    (root / 'plugin' / 'hooks.py').write_text('from ..plan import a\n')
    (root / 'data' / 'loader.py').write_text('from ..plugin.hooks import x\n')
    (root / 'plan' / 'a.py').write_text('from . import b\n')
    (root / 'plan' / 'b.py').write_text('def f():\n    from .a import g\n')
    found = problems(root)
    assert any('timm_trd.data.loader (data) imports timm_trd.plugin.hooks (plugin)' in line for line in found), found
    assert any(line.startswith('cycle: timm_trd.plan.a -> timm_trd.plan.b -> timm_trd.plan.a') for line in found), found
    assert len(found) == 2, found


def test_public_names_and_entry_points_import():
    import timm_trd
    for name in timm_trd.__all__:
        assert getattr(timm_trd, name) is not None
    names = {ep.name: ep for ep in entry_points(group='console_scripts') if ep.name.startswith('timm-trd')}
    assert set(ENTRY_POINTS) <= set(names), f'installed: {sorted(names)} (reinstall: pip install -e .)'
    for name in ENTRY_POINTS:
        assert callable(names[name].load())
    done = subprocess.run([sys.executable, '-m', 'timm_trd', '--help'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'timm-trd-train' in done.stdout and 'Traceback' not in done.stderr, done.stderr


@pytest.mark.parametrize('module', ['timm_trd.data.reduced_copy', 'timm_trd.evaluation.evaluate'])
def test_module_commands_answer_help(module):
    done = subprocess.run([sys.executable, '-m', module, '--help'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'usage' in done.stdout.lower(), done.stderr
    importlib.import_module(module)
