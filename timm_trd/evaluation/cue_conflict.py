"""Shape bias on the stimuli of Geirhos et al. (ICLR 2019), for ``timm-trd-eval --cue-conflict-dir``.

The published stimuli (github.com/rgeirhos/texture-vs-shape, ``stimuli/``) are, in 16 categories:

- ``style-transfer-preprocessed-512/<category>/<shape><n>-<texture><m>.png``: 1,280 cue-conflict images, the shape
  of one object with the texture of another (style transfer); 80 of them have shape and texture of one category;
- ``edges/<category>/*.png`` and ``filled-silhouettes/<category>/*.png``: 160 each, shape without texture.

A classifier's answer becomes one of the categories (:mod:`timm_trd.evaluation.geirhos_categories`): a category's score is
the mean of the softmax probabilities of its classes, the decision the category with the largest score. Among the
cue-conflict images whose shape and texture categories differ, a decision is a *shape* decision (the shape's
category), a *texture* decision (the texture's) or neither, and

    shape bias = shape decisions / (shape decisions + texture decisions).

Shape accuracy and texture accuracy are the shares of shape and of texture decisions among those images.

For a model of another label set the user maps categories to its classes (``--cue-conflict-map``: a file, an
inline ``category=class,...`` or the built-in ``cifar10``); only the mapped categories compete, the model's other
classes are ignored, and images of an unmapped category (a cue-conflict image with an unmapped shape or texture)
are left out and counted as such.

Images are fed through timm's own eval transform for the model (``create_loader(is_training=False)``: resize the
shorter side to ``size / crop_pct``, center crop ``size``, normalise); the output says which transform ran.

Bad input (no such folder, a folder that is not the stimuli's layout, a map naming unknown categories or classes)
raises :class:`~timm_trd.errors.TRDConfigError` with one line that names the fix.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from PIL import Image

from ..errors import TRDConfigError
from .bias_caveat import bias_caveat
from .geirhos_categories import CATEGORIES, CIFAR10_CLASSES, CIFAR10_MAP, IMAGENET_INDICES

NAME = 'cue-conflict stimuli of Geirhos et al. (ICLR 2019)'
CUE_CONFLICT_FOLDER = 'style-transfer-preprocessed-512'
SHAPE_ONLY_FOLDERS = {'edges': 'edges', 'filled_silhouettes': 'filled-silhouettes'}
SETS = ('cue_conflict',) + tuple(SHAPE_ONLY_FOLDERS)
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
BUILT_IN_MAPS = ('imagenet', 'cifar10')
MAP_OPTION = '--cue-conflict-map'
DIR_OPTION = '--cue-conflict-dir'
_CONFLICT_FILE = re.compile(r'([a-z]+)(\d+)-([a-z]+)(\d+)')
_LAYOUT = (f'the stimuli/ folder of rgeirhos/texture-vs-shape (with {CUE_CONFLICT_FOLDER}/, edges/, '
           f'filled-silhouettes/) or its cue-conflict folder (<category>/<shape><n>-<texture><m>.png)')


# -- the stimuli on disk --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stimulus:
    """One image: its path, the category of its shape and, for cue-conflict images, of its texture."""
    path: Path
    shape: str
    texture: Optional[str] = None


@dataclass
class Stimuli:
    """What :func:`find_stimuli` found: ``found`` says which layout, ``folders`` and ``images`` hold, per set
    (``cue_conflict``, ``edges``, ``filled_silhouettes``), its folder and images (None: not there)."""
    root: Path
    found: str
    folders: Dict[str, Optional[Path]] = field(default_factory=dict)
    images: Dict[str, Optional[List[Stimulus]]] = field(default_factory=dict)


def _category_folders(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _is_cue_conflict_folder(folder: Path) -> bool:
    subfolders = _category_folders(folder)
    return bool(subfolders) and all(p.name in CATEGORIES for p in subfolders) and any(
        _CONFLICT_FILE.fullmatch(f.stem) for p in subfolders for f in p.iterdir())


def _image_files(folder: Path) -> List[Path]:
    files = sorted(f for f in folder.iterdir() if not f.name.startswith('.'))
    for f in files:
        if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            raise TRDConfigError(f'{DIR_OPTION}: {f} is not a {"/".join(IMAGE_SUFFIXES)} image; the stimuli '
                                 f'folders hold only images, remove it')
    return files


def _scan(folder: Path, cue_conflict: bool) -> List[Stimulus]:
    """The images of one set: ``<category>/`` folders of images; a cue-conflict image is named
    ``<shape><n>-<texture><m>`` with its shape's folder."""
    images = []
    for sub in _category_folders(folder):
        if sub.name not in CATEGORIES:
            raise TRDConfigError(f'{DIR_OPTION}: {sub} is not one of the 16 categories '
                                 f'({", ".join(CATEGORIES)}); give {_LAYOUT}')
        for f in _image_files(sub):
            if not cue_conflict:
                images.append(Stimulus(f, sub.name))
                continue
            match = _CONFLICT_FILE.fullmatch(f.stem)
            if not match or match.group(1) != sub.name or match.group(3) not in CATEGORIES:
                raise TRDConfigError(f'{DIR_OPTION}: {f} is not named <shape><n>-<texture><m> with shape '
                                     f'{sub.name} and a texture of the 16 categories; give {_LAYOUT}')
            images.append(Stimulus(f, match.group(1), match.group(3)))
    if not images:
        raise TRDConfigError(f'{DIR_OPTION}: no images in {folder}; give {_LAYOUT}')
    return images


def find_stimuli(path) -> Stimuli:
    """Read the stimuli from ``path``: the ``stimuli/`` folder (cue conflict, and edges and filled silhouettes
    where present) or the cue-conflict folder itself (then only the cue-conflict images)."""
    root = Path(path)
    if not root.is_dir():
        raise TRDConfigError(f'{DIR_OPTION} {root} is not a folder; give {_LAYOUT}')
    if (root / CUE_CONFLICT_FOLDER).is_dir():
        found = 'the stimuli/ folder'
        folders = {'cue_conflict': root / CUE_CONFLICT_FOLDER}
        folders.update({key: (root / name if (root / name).is_dir() else None)
                        for key, name in SHAPE_ONLY_FOLDERS.items()})
    elif _is_cue_conflict_folder(root):
        found = 'the cue-conflict folder itself (edges and filled silhouettes: give the stimuli/ folder above it)'
        folders = {'cue_conflict': root, **{key: None for key in SHAPE_ONLY_FOLDERS}}
    else:
        raise TRDConfigError(f'{DIR_OPTION} {root} is neither {_LAYOUT}')
    images = {key: (_scan(folder, key == 'cue_conflict') if folder is not None else None)
              for key, folder in folders.items()}
    return Stimuli(root, found, folders, images)


# -- categories -> the model's classes ------------------------------------------------------------------------
@dataclass(frozen=True)
class CategoryMap:
    """Which of the model's classes stand for each mapped category (sorted), and where the map came from."""
    source: str
    classes: Dict[str, List[int]]
    labels: Dict[str, List[str]]
    num_classes: int

    @property
    def restricted(self) -> bool:
        return len(self.classes) < len(CATEGORIES)


def read_map(spec: Optional[str]):
    """The raw map of ``--cue-conflict-map``: None (the default), a built-in name, a JSON/YAML file holding
    ``{category: class or [classes]}`` or an inline ``category=class,...`` (a category may repeat). Classes are
    names (of the data dir's class folders) or indices. Returns ``(source, {category: [class, ...]})``, or the
    built-in name; checks the categories, not yet the classes (:func:`resolve_map`)."""
    if spec is None or spec in BUILT_IN_MAPS:
        return spec
    path = Path(spec)
    if path.is_file():
        import yaml
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise TRDConfigError(f'{MAP_OPTION} {spec}: cannot read it as JSON or YAML '
                                 f'({str(e).splitlines()[0]}); fix the file') from None
        if not isinstance(data, dict) or not data:
            raise TRDConfigError(f'{MAP_OPTION} {spec} must hold a mapping {{category: [classes]}}, '
                                 f'e.g. {{"car": ["automobile"], "boat": ["ship"]}}')
        raw = {str(k): (v if isinstance(v, list) else [v]) for k, v in data.items()}
        source = f'file {spec}'
    elif '=' in spec:
        raw = {}
        for item in filter(None, (s.strip() for s in spec.split(','))):
            category, _, cls = item.partition('=')
            if not category.strip() or not cls.strip():
                raise TRDConfigError(f'{MAP_OPTION}: "{item}" is not category=class; e.g. car=automobile,boat=ship')
            raw.setdefault(category.strip(), []).append(cls.strip())
        source = 'inline'
    else:
        raise TRDConfigError(f'{MAP_OPTION} {spec}: no such file, not a built-in map ({", ".join(BUILT_IN_MAPS)}) '
                             f'and not category=class,...; e.g. {MAP_OPTION} cifar10')
    unknown = [c for c in raw if c not in CATEGORIES]
    if unknown:
        raise TRDConfigError(f'{MAP_OPTION}: {", ".join(map(repr, unknown))} is not one of the 16 categories of the '
                             f'stimuli ({", ".join(CATEGORIES)}); map those names')
    empty = [c for c, v in raw.items() if not v]
    if empty:
        raise TRDConfigError(f'{MAP_OPTION}: no classes for {", ".join(empty)}; give at least one class each')
    return source, raw


def _class_index(value, category: str, num_classes: int, class_to_idx: Optional[Mapping[str, int]]) -> int:
    """The index of one class of ``category``'s: a name of ``class_to_idx`` or an index (an int or its digits)."""
    if isinstance(value, str) and class_to_idx and value in class_to_idx:
        return int(class_to_idx[value])
    if isinstance(value, str) and not value.isdigit():
        if not class_to_idx:
            raise TRDConfigError(f'{MAP_OPTION}: class {value!r} (for {category}) is a name, but there are no class '
                                 f'names to look it up in; give --data-dir (its class folders) or class indices')
        names = ', '.join(list(class_to_idx)[:20]) + (', ...' if len(class_to_idx) > 20 else '')
        raise TRDConfigError(f'{MAP_OPTION}: class {value!r} (for {category}) is not a class of the model '
                             f'(classes: {names}); fix the name or give its index')
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TRDConfigError(f'{MAP_OPTION}: class {value!r} (for {category}) is neither a class name nor an index')
    index = int(value)
    if not 0 <= index < num_classes:
        raise TRDConfigError(f'{MAP_OPTION}: class index {index} (for {category}) is outside the model\'s '
                             f'{num_classes} classes (0..{num_classes - 1})')
    return index


def resolve_map(raw, num_classes: int, class_to_idx: Optional[Mapping[str, int]] = None) -> CategoryMap:
    """Class indices for each category of ``raw`` (:func:`read_map`) in a model of ``num_classes`` classes;
    ``class_to_idx`` names them (the data dir's class folders). No map: the ImageNet one for 1000 classes."""
    if raw is None:
        if num_classes != 1000:
            raise TRDConfigError(f'{DIR_OPTION}: the model has {num_classes} classes, not ImageNet\'s 1000; say which '
                                 f'of its classes stand for the categories with {MAP_OPTION} (e.g. cifar10, a JSON '
                                 f'file or car=automobile,boat=ship)')
        raw = 'imagenet'
    if raw == 'imagenet':
        if num_classes != 1000:
            raise TRDConfigError(f'{MAP_OPTION} imagenet needs an ImageNet-1k model (1000 classes), this one has '
                                 f'{num_classes}; give a map of its own classes')
        classes = {c: list(IMAGENET_INDICES[c]) for c in CATEGORIES}
        return CategoryMap('ImageNet-1k class sets of Geirhos et al.', classes,
                           {c: [str(i) for i in v] for c, v in classes.items()}, num_classes)
    if raw == 'cifar10':
        if num_classes != 10:
            raise TRDConfigError(f'{MAP_OPTION} cifar10 needs a CIFAR-10 model (10 classes), this one has '
                                 f'{num_classes}; give --num-classes 10 or another map')
        source, raw = 'built-in cifar10', dict(CIFAR10_MAP)
        names = class_to_idx or {name: i for i, name in enumerate(CIFAR10_CLASSES)}
        if not class_to_idx:
            source += ', classes in CIFAR-10\'s standard order (no --data-dir names them)'
        class_to_idx = names
    else:
        source, raw = raw
    if len(raw) < 2:
        raise TRDConfigError(f'{MAP_OPTION}: only {", ".join(raw)} mapped; a cue conflict needs at least two '
                             f'categories, map more of them')
    classes, labels, owner = {}, {}, {}
    by_index = {i: n for n, i in (class_to_idx or {}).items()}
    for category in sorted(raw):
        indices = []
        for value in raw[category]:
            index = _class_index(value, category, num_classes, class_to_idx)
            if owner.get(index, category) != category:
                raise TRDConfigError(f'{MAP_OPTION}: class {value!r} stands for both {owner[index]} and {category}; '
                                     f'give each class to one category')
            owner[index] = category
            if index not in indices:
                indices.append(index)
        classes[category] = indices
        labels[category] = [by_index.get(i, str(i)) for i in indices]
    return CategoryMap(source, classes, labels, num_classes)


def category_scores(probabilities: torch.Tensor, classes: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """``N x K`` scores: for each of the ``K`` categories (in ``classes``' order), the mean of the probabilities of
    its classes."""
    return torch.stack([probabilities[:, list(idx)].mean(dim=1) for idx in classes.values()], dim=1)


def decide(logits: torch.Tensor, category_map: CategoryMap) -> List[str]:
    """The category of each row of ``logits``: softmax over all the model's classes, mean per category, the
    largest mean."""
    scores = category_scores(torch.softmax(logits.float(), dim=-1), category_map.classes)
    names = list(category_map.classes)
    return [names[i] for i in scores.argmax(dim=1).tolist()]


# -- running the model ----------------------------------------------------------------------------------------
class StimulusDataset(torch.utils.data.Dataset):
    """Images of a stimulus list as ``(transform(image), index)``; timm's ``create_loader`` sets ``transform``."""

    def __init__(self, images: Sequence[Stimulus]):
        self.images = list(images)
        self.transform = None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        with Image.open(self.images[i].path) as image:
            image = image.convert('RGB')
        return (self.transform(image) if self.transform is not None else image), i


def describe_transform(transform) -> str:
    """A short account of timm's eval transform: e.g. ``resize shorter side to 36 px (bicubic) -> center crop
    32x32 -> to tensor -> normalise``."""
    steps = []
    for t in getattr(transform, 'transforms', [transform]):
        name = type(t).__name__
        if name == 'Resize':
            interp = getattr(getattr(t, 'interpolation', None), 'value', '?')
            size = t.size if isinstance(t.size, int) or len(t.size) != 1 else t.size[0]
            steps.append(f'resize shorter side to {size} px ({interp})' if isinstance(size, int)
                         else f'resize to {size[0]}x{size[1]} px ({interp})')
        elif name == 'CenterCrop':
            steps.append(f'center crop {t.size[0]}x{t.size[1]}')
        elif name in ('ToTensor', 'MaybeToTensor'):
            steps.append('to tensor')
        elif name == 'Normalize':
            steps.append('normalise')
        else:
            steps.append(name)
    return ' -> '.join(steps)


def _predict(model, images: Sequence[Stimulus], category_map: CategoryMap, config: dict, batch_size: int,
             workers: int, device) -> Tuple[List[str], str, List[Tuple[int, int]]]:
    """Decisions for ``images``; the transform's description; the input sizes the model saw."""
    from timm.data import create_loader
    loader = create_loader(
        StimulusDataset(images), input_size=config['input_size'], batch_size=batch_size, is_training=False,
        use_prefetcher=False, interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
        crop_pct=config['crop_pct'], crop_mode=config.get('crop_mode'), num_workers=workers)
    decisions, seen = [], set()
    with torch.inference_mode():
        for batch, _ in loader:
            seen.add(tuple(batch.shape[-2:]))
            decisions += decide(model(batch.to(device)), category_map)
    return decisions, describe_transform(loader.dataset.transform), sorted(seen)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float('nan')


def _bias(shape: int, texture: int) -> float:
    return shape / (shape + texture) if shape + texture else float('nan')


def tally_cue_conflict(images: Sequence[Stimulus], decisions: Mapping[Path, str], mapped: Sequence[str]) -> dict:
    """The counts of the module docstring over ``images`` (decisions by path; images with an unmapped shape or
    texture category are left out), overall and per mapped category."""
    mapped = [c for c in CATEGORIES if c in mapped]
    per = {c: {'shape_images': 0, 'shape_decisions': 0, 'texture_decisions_on_shape': 0,
               'texture_images': 0, 'texture_decisions': 0} for c in mapped}
    out = {'images': len(images), 'unmapped': 0, 'same_category': 0, 'same_category_correct': 0,
           'conflicts': 0, 'shape': 0, 'texture': 0, 'other': 0}
    for image in images:
        if image.shape not in per or image.texture not in per:
            out['unmapped'] += 1
            continue
        decision = decisions[image.path]
        if image.shape == image.texture:
            out['same_category'] += 1
            out['same_category_correct'] += decision == image.shape
            continue
        out['conflicts'] += 1
        kind = 'shape' if decision == image.shape else 'texture' if decision == image.texture else 'other'
        out[kind] += 1
        shape_row, texture_row = per[image.shape], per[image.texture]
        shape_row['shape_images'] += 1
        shape_row['shape_decisions'] += kind == 'shape'
        shape_row['texture_decisions_on_shape'] += kind == 'texture'
        texture_row['texture_images'] += 1
        texture_row['texture_decisions'] += kind == 'texture'
    for row in per.values():
        row['shape_accuracy'] = _percent(row['shape_decisions'], row['shape_images'])
        row['texture_accuracy'] = _percent(row['texture_decisions'], row['texture_images'])
        row['shape_bias'] = _bias(row['shape_decisions'], row['texture_decisions_on_shape'])
    out.update(shape_bias=_bias(out['shape'], out['texture']),
               shape_accuracy=_percent(out['shape'], out['conflicts']),
               texture_accuracy=_percent(out['texture'], out['conflicts']),
               same_category_accuracy=_percent(out['same_category_correct'], out['same_category']),
               per_category=per)
    return out


def tally_accuracy(images: Sequence[Stimulus], decisions: Mapping[Path, str], mapped: Sequence[str]) -> dict:
    """Accuracy on shape-only images (edges, silhouettes) of the mapped categories, overall and per category."""
    per = {c: {'images': 0, 'correct': 0} for c in CATEGORIES if c in mapped}
    unmapped = 0
    for image in images:
        if image.shape not in per:
            unmapped += 1
            continue
        per[image.shape]['images'] += 1
        per[image.shape]['correct'] += decisions[image.path] == image.shape
    for row in per.values():
        row['accuracy'] = _percent(row['correct'], row['images'])
    counted = sum(r['images'] for r in per.values())
    correct = sum(r['correct'] for r in per.values())
    return {'images': len(images), 'unmapped': unmapped, 'counted': counted, 'correct': correct,
            'accuracy': _percent(correct, counted), 'per_category': per}


def evaluate_stimuli(model: torch.nn.Module, stimuli: Stimuli, category_map: CategoryMap,
                     img_size: Optional[int] = None, crop_pct: Optional[float] = None, batch_size: int = 64,
                     workers: int = 1, device='cpu', **config_overrides) -> dict:
    """Run ``model`` (already loaded) on ``stimuli`` at its test size (or ``img_size``) through timm's eval
    transform; ``config_overrides`` (e.g. ``mean``, ``std``) go to timm's ``resolve_data_config``. Returns the
    counts of :func:`tally_cue_conflict` and :func:`tally_accuracy` per set, as a JSON-able dict."""
    import time
    from timm.data import resolve_data_config

    start = time.perf_counter()
    device = torch.device(device)
    config = resolve_data_config({'img_size': img_size, 'crop_pct': crop_pct, **config_overrides}, model=model)
    model = model.to(device).eval()
    mapped = list(category_map.classes)
    result = {'name': NAME, 'dir': str(stimuli.root), 'found': stimuli.found,
              'folders': {k: (str(v) if v is not None else None) for k, v in stimuli.folders.items()},
              'map': {'source': category_map.source, 'restricted': category_map.restricted,
                      'categories': category_map.labels, 'classes': category_map.classes,
                      'num_classes': category_map.num_classes},
              'input_size': list(config['input_size']), 'crop_pct': config['crop_pct'],
              'interpolation': config['interpolation']}
    sources = set()
    for key in SETS:
        images = stimuli.images.get(key)
        if images is None:
            result[key] = None
            continue
        wanted = [im for im in images if im.shape in mapped and (im.texture is None or im.texture in mapped)]
        decisions, described, seen = _predict(model, wanted, category_map, config, batch_size, workers, device)
        result['transform'], result['model_input'] = described, [list(s) for s in seen]
        by_path = dict(zip((im.path for im in wanted), decisions))
        tally = tally_cue_conflict if key == 'cue_conflict' else tally_accuracy
        result[key] = {**tally(images, by_path, mapped),
                       'decisions': {str(p.relative_to(stimuli.folders[key])): d for p, d in by_path.items()}}
        for im in wanted:
            with Image.open(im.path) as image:  # reads the header only
                sources.add('x'.join(map(str, image.size)))
    cue = result.get('cue_conflict')
    if cue:
        decided = 100.0 * (cue['shape'] + cue['texture']) / cue['conflicts'] if cue['conflicts'] else None
        chance = 100.0 * 2 / len(mapped) if len(mapped) > 2 else None  # a guess picks the shape or texture category
        cue['caveat'] = bias_caveat(cue['shape'], cue['texture'], decided, chance,
                                    'conflicts decided for the shape or the texture category')
    result['stimulus_sizes'] = sorted(sources)
    result['seconds'] = round(time.perf_counter() - start, 2)
    return result


# -- output ---------------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 1) -> str:
    return '-' if value != value else f'{value:.{digits}f}'


def format_table(result: dict) -> str:
    """The result as text: what was read and how, then a markdown table per category and overall."""
    m, cue = result['map'], result['cue_conflict']
    mapped = list(m['categories'])
    size = result['input_size'][-1]
    if m['restricted']:
        pairs = ', '.join(f'{c}={"+".join(v)}' for c, v in m['categories'].items())
        how = (f'{len(mapped)} of the 16 categories mapped ({m["source"]}: {pairs}); decision = the mapped category '
               f'with the largest mean softmax probability of its classes, the model\'s '
               f'{m["num_classes"] - sum(len(v) for v in m["classes"].values())} other classes ignored')
    else:
        how = (f'{m["source"]} ({sum(len(v) for v in m["classes"].values())} classes); decision = the category with '
               f'the largest mean softmax probability of its classes')
    lines = [f'{NAME}: {result["dir"]}, found {result["found"]}', f'classes: {how}',
             f'images: {", ".join(result["stimulus_sizes"])} px, through timm\'s eval transform at {size} px '
             f'(crop_pct {result["crop_pct"]}): {result["transform"]}; {result["seconds"]:.1f} s']
    left = cue['images'] - cue['unmapped']
    lines.append(f'cue conflict: {left} of {cue["images"]} images have both categories mapped '
                 f'({cue["unmapped"]} left out); {cue["same_category"]} of them have shape = texture category '
                 f'(not counted in the bias; {cue["same_category_correct"]} correct), {cue["conflicts"]} conflicts '
                 f'counted: shape decisions {cue["shape"]}, texture {cue["texture"]}, other {cue["other"]}')
    for key, label in (('edges', 'edges'), ('filled_silhouettes', 'filled silhouettes')):
        s = result[key]
        lines.append(f'{label}: not evaluated (no folder)' if s is None else
                     f'{label}: {s["counted"]} of {s["images"]} images of mapped categories, {s["correct"]} correct')
    lines.append(f'shape bias = shape / (shape + texture) = {cue["shape"]} / ({cue["shape"]} + {cue["texture"]}) '
                 f'= {_fmt(cue["shape_bias"], 3)}, from {cue["shape"] + cue["texture"]} decisions')
    if cue.get('caveat'):
        lines.append(cue['caveat'])
    lines += ['', '| category | conflicts (by shape) | shape acc. (%) | conflicts (by texture) | texture acc. (%) | '
                  'shape bias | edges (%) | filled silhouettes (%) |', '|---|---|---|---|---|---|---|---|']

    def shape_only(key, category=None):
        s = result[key]
        if s is None:
            return '-'
        row = s if category is None else s['per_category'][category]
        n, k = (row['counted'], row['correct']) if category is None else (row['images'], row['correct'])
        return f'{_fmt(row["accuracy"])} ({k}/{n})'

    for c in mapped:
        r = cue['per_category'][c]
        lines.append(f'| {c} | {r["shape_images"]} | {_fmt(r["shape_accuracy"])} ({r["shape_decisions"]}) | '
                     f'{r["texture_images"]} | {_fmt(r["texture_accuracy"])} ({r["texture_decisions"]}) | '
                     f'{_fmt(r["shape_bias"], 3)} ({r["shape_decisions"]}/'
                     f'{r["shape_decisions"] + r["texture_decisions_on_shape"]}) | {shape_only("edges", c)} | '
                     f'{shape_only("filled_silhouettes", c)} |')
    lines.append(f'| **all** | {cue["conflicts"]} | {_fmt(cue["shape_accuracy"])} ({cue["shape"]}) | '
                 f'{cue["conflicts"]} | {_fmt(cue["texture_accuracy"])} ({cue["texture"]}) | '
                 f'{_fmt(cue["shape_bias"], 3)} ({cue["shape"]}/{cue["shape"] + cue["texture"]}) | '
                 f'{shape_only("edges")} | {shape_only("filled_silhouettes")} |')
    lines.append('(a row\'s shape accuracy and shape bias: over the conflicts with that shape category, shape / '
                 '(shape + texture decisions); its texture accuracy: over the conflicts with that texture category)')
    return '\n'.join(lines)


def flatten(result: dict) -> dict:
    """A flat row of the headline figures (for ``timm_trd.evaluation.evaluate.flatten``)."""
    cue = result['cue_conflict']
    row = {'geirhos_shape_bias': round(cue['shape_bias'], 4), 'geirhos_conflicts': cue['conflicts'],
           'geirhos_shape_acc': round(cue['shape_accuracy'], 3),
           'geirhos_texture_acc': round(cue['texture_accuracy'], 3),
           'geirhos_categories': len(result['map']['categories'])}
    for key in SHAPE_ONLY_FOLDERS:
        if result[key] is not None:
            row[f'geirhos_{key}_acc'] = round(result[key]['accuracy'], 3)
    return row
