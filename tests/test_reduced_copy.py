"""The reduced-resolution copy: written resumably with the same tree, checked against the training folder
before training, read for reduced batches (same picture), and served under DDP like the original."""
import argparse
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MINI_TRAIN
from test_decode import psnr, same_draws, today, unit_transform, write_folder
from timm_trd import TRDSchedule
from timm_trd.plugin.config import TRDConfigError, config_from_args
from timm_trd.data.decode import ReducedDecodeDataset, ReducedLoading
from timm_trd.data.reduced_copy.check import check_copy
from timm_trd.data.reduced_copy.index import INDEX, JOURNAL, MANIFEST, TEMP_MARK
from timm_trd.data.reduced_copy.make import main as copy_main, make_copy

pytestmark = pytest.mark.skipif(ReducedDecodeDataset is None, reason='needs the loader path (timm >= 1.0.29)')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """DATA/train with JPEGs (and one PNG), and its reduced copy COPY/train."""
    root = tmp_path_factory.mktemp('data')
    write_folder(root / 'train', n_per_class=6)
    Image.open(next((root / 'train' / 'c0').glob('*.jpg'))).save(root / 'train' / 'c1' / 'extra.png')
    make_copy(str(root / 'train'), str(root / 'copy' / 'train'), workers=2, progress=False)
    return root


def reader_of(folder):
    from timm.data import ImageDataset
    return ImageDataset(str(folder)).reader


def test_copy_has_the_same_tree_at_half_size(data):
    src, dst = data / 'train', data / 'copy' / 'train'
    names = sorted(p.relative_to(src) for p in src.rglob('*') if p.is_file())
    copied = sorted(p.relative_to(dst) for p in dst.rglob('*') if p.is_file() and p.name not in (MANIFEST, INDEX))
    assert copied == names
    for rel in names:
        a, b = Image.open(src / rel), Image.open(dst / rel)
        assert b.format == a.format and b.size == (a.size[0] // 2, a.size[1] // 2)
    manifest = json.loads((dst / MANIFEST).read_text())
    assert manifest['images'] == manifest['copied'] == len(names)
    assert manifest['quality'] == 90 and manifest['scale'] == 2
    assert manifest['formats'] == {'JPEG': len(names) - 1, 'PNG': 1} and manifest['input_img_mode'] == 'RGB'
    assert manifest['copy_bytes'] < manifest['source_bytes']


def test_copy_resumes_and_other_settings_rewrite_it(tmp_path, capsys):
    src = write_folder(tmp_path / 'train', n_per_class=3)
    dst = tmp_path / 'copy'
    copy_main([str(src), str(dst), '--workers', '1'])
    assert '6 images: 6 written, 0 kept' in capsys.readouterr().out
    (dst / 'c0' / '1.jpg').unlink()
    copy_main([str(src), str(dst), '--workers', '1'])
    assert '6 images: 1 written, 5 kept' in capsys.readouterr().out
    copy_main([str(src), str(dst), '--workers', '1', '--quality', '80'])  # not a mix of two qualities
    out = capsys.readouterr().out
    assert '6 images: 6 written, 0 kept' in out and 'quality 90 -> 80' in out and 'JPEG quality 80' in out


def test_copy_is_checked_against_the_training_folder(data, tmp_path):
    reader = reader_of(data / 'train')
    assert check_copy(reader, str(data / 'copy' / 'train'))[:2] == (str(data / 'copy' / 'train'), 2.0)
    assert check_copy(reader, str(data / 'copy'))[0] == str(data / 'copy' / 'train')  # the copy of --data-dir
    with pytest.raises(TRDConfigError, match='not a finished reduced copy'):
        check_copy(reader, str(tmp_path))
    other = write_folder(tmp_path / 'other' / 'train', n_per_class=7)
    with pytest.raises(TRDConfigError, match=r'does not match .* 2 training images missing there \(e.g. c0/6.jpg\)'):
        check_copy(reader_of(other), str(data / 'copy'))
    fewer = write_folder(tmp_path / 'fewer' / 'train', n_per_class=6)
    (fewer / 'c0' / '0.jpg').rename(fewer / 'c1' / 'extra.png')
    with pytest.raises(TRDConfigError, match=r'1 images not in the training folder \(e.g. c0/0.jpg\)'):
        check_copy(reader_of(fewer), str(data / 'copy'))


@pytest.mark.parametrize('copy_rule', ['always', 'when-fits'])
def test_reduced_image_from_the_copy_is_close_to_todays(data, copy_rule):
    """Same seed, same crop: read from the copy the reduced image differs from timm's by the copy's resampling
    and JPEG re-encoding, and a crop smaller than twice the reduced size is upsampled (the plugin's 'always'
    rule): PSNR >= 30 dB on average. Read only when the crop fits there, every image stays >= 30 dB."""
    files = sorted((data / 'train').rglob('*.jpg'))
    transform = unit_transform(56)
    loading = ReducedLoading(transform, 'RGB', copy_dir=str(data / 'copy' / 'train'), source_root=str(data / 'train'),
                             copy_rule=copy_rule)
    values = []
    for n, path in enumerate(files * 3):
        ref = same_draws(n, lambda: today(path, transform))
        fast = same_draws(n, lambda: loading.load(open(path, 'rb'), loading.copy_path(str(path))))
        values.append(min(psnr(ref, fast), 60.0))
    print(f'PSNR from the copy ({copy_rule}) over {len(values)} crops: mean {np.mean(values):.1f} dB, '
          f'p5 {np.percentile(values, 5):.1f} dB, min {min(values):.1f} dB')
    assert np.mean(values) >= 30
    if copy_rule == 'when-fits':
        assert min(values) >= 30


def test_options_from_the_command_line_and_yaml(data):
    def cfg(**kw):
        return config_from_args(argparse.Namespace(trd_prob=0.5, **kw))
    assert cfg().fast_decode is True and cfg().reduced_copy is None
    assert cfg(trd_fast_decode=False).fast_decode is False
    assert cfg(trd_fast_decode='false').fast_decode is False  # a YAML string
    assert cfg(trd_reduced_copy=str(data / 'copy')).reduced_copy == str(data / 'copy')
    with pytest.raises(TRDConfigError, match='--trd-fast-decode is true or false'):
        cfg(trd_fast_decode='maybe')
    with pytest.raises(TRDConfigError, match='is not a directory; write the copy with timm-trd-reduced-copy'):
        cfg(trd_reduced_copy=str(data / 'nowhere'))


def test_yaml_recipe_reads_the_copy(mini_train, data, tmp_path, monkeypatch):
    from timm_trd import install
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(f'trd_prob: 0.5\ntrd_size: 32\ntrd_fast_decode: false\ntrd_reduced_copy: {data / "copy"}\n')
    monkeypatch.setattr('sys.argv', ['mini_train.py', '-c', str(recipe), '--data-dir', str(data), '--img-size', '64',
                                     '--trd-mode', 'loader', '-b', '4', '--epochs', '1'])
    plugin = install(mini_train)
    result = mini_train.main()
    reduced = plugin.loader.loader.loader.dataset.reduced
    assert reduced.copy_dir == str(data / 'copy' / 'train') and reduced.fast_decode is False
    plan = plugin.loader.plan(0)
    assert [tuple(s[2:]) for s in result['shapes']['0']] == [(32, 32) if r else (64, 64) for r in plan]


def launch(*args, torchrun=False, timeout=600):
    prefix = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] if torchrun else []
    cmd = [sys.executable, *prefix, '-m', 'timm_trd', '--train-script', str(MINI_TRAIN), *args]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_copy_that_does_not_match_stops_the_run(data, tmp_path):
    other = write_folder(tmp_path / 'other' / 'train', n_per_class=7)
    result = launch('--data-dir', str(other.parent), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-reduced-copy', str(data / 'copy'), '-b', '4', '--epochs', '1')
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('timm-trd: error: --trd-reduced-copy') and 'does not match the training folder' in last
    assert 'in a folder of its own: timm-trd-reduced-copy' in last and f'a rerun into {data / "copy"}' in last
    device = launch('--data-dir', str(data), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-mode', 'device', '--trd-reduced-copy', str(data / 'copy'), '-b', '4', '--epochs', '1')
    assert device.returncode == 2 and 'needs the loader path' in device.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('mechanism', ['fast-decode', 'copy'])
def test_ddp_ranks_serve_the_planned_sizes(data, tmp_path, mechanism):
    extra = ['--trd-reduced-copy', str(data / 'copy'), '--no-trd-fast-decode'] if mechanism == 'copy' else []
    result = launch('--data-dir', str(data), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-mode', 'loader', '--epochs', '2', '-b', '2', '--workers', '1', '--result-dir', str(tmp_path),
                    *extra, torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    schedule = TRDSchedule(prob=0.5, total_epochs=2, seed=42)
    batches = (13 // 2 + 1) // 2  # 13 images; DistributedSampler pads to 14, 7 per rank, batches of 2
    for epoch in ('0', '1'):
        sizes = [[tuple(shape[2:]) for shape in r['shapes'][epoch]] for r in runs]
        assert sizes[0] == sizes[1] == [(32, 32) if r else (64, 64) for r in schedule.plan(int(epoch), batches)]


# --- the copy serves the training folder's pictures and no others (issue 17, item 1) ---

def fresh_copy(src, dst):
    make_copy(str(src), str(dst), workers=1, progress=False)
    return dst


def refused(src, copy, match, **kw):
    with pytest.raises(TRDConfigError, match=match) as error:
        check_copy(reader_of(src), str(copy), **kw)
    assert 'rerun timm-trd-reduced-copy' in str(error.value) or 'in a folder of its own: timm-trd-reduced-copy' \
        in str(error.value)
    return str(error.value)


def own_copy_command(message):
    """The command of a 'copy of its own' fix, and the folder it writes."""
    command = message.split('in a folder of its own: ')[1].split(' and pass ')[0].split()
    assert command[0] == 'timm-trd-reduced-copy'
    return command, command[2]


def same_bytes(a, b, rels):
    return all((a / r).read_bytes() == (b / r).read_bytes() for r in rels)


def test_a_copy_of_another_folder_with_the_same_names_is_refused_and_the_fix_makes_one_of_its_own(tmp_path):
    """CIFAR-10's layout: train/c0/0.jpg and val/c0/0.jpg. A copy of val/ offered for train/ is refused, and the
    command the message names writes a copy of train/ beside it, every file, leaving the copy of val/ as it was."""
    train = write_folder(tmp_path / 'train', n_per_class=3, seed=0)
    val = write_folder(tmp_path / 'val', n_per_class=3, seed=1)
    copy = fresh_copy(val, tmp_path / 'copy')
    message = refused(train, copy, r'made from .*val\) does not match the training folder .*train: 6 training images '
                                   r'that are not the ones the copy was made from')
    command, own = own_copy_command(message)
    assert own != str(copy) and f'a rerun into {copy} would delete its copies of the images of {val}' in message
    m = make_copy(*command[1:3], workers=1, progress=False)
    assert m['written_this_run'] == 6 and m['kept_this_run'] == 0
    check_copy(reader_of(train), own)
    check_copy(reader_of(val), str(copy))  # the copy of val/ is untouched
    rels = [str(p.relative_to(train)) for p in train.rglob('*.jpg')]
    assert same_bytes(Path(own), fresh_copy(train, tmp_path / 'reference'), rels)  # the training pictures, every one


def test_a_copy_of_the_full_set_used_with_a_subset_keeps_its_images(tmp_path):
    """A copy made from the full training folder, offered for a subset of it (some classes): refused, and the
    fix the message names never deletes an image of the full set's copy."""
    import shutil
    full = write_folder(tmp_path / 'full' / 'train', n_per_class=3, classes=3, seed=0)
    subset = tmp_path / 'subset' / 'train'
    for folder in sorted(full.iterdir())[:2]:
        shutil.copytree(folder, subset / folder.name)  # copy2: same size and time as the full set's files
    copy = fresh_copy(full, tmp_path / 'copy')
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob('*.jpg'))
    message = refused(subset, copy, r'made from .*full/train\) does not match the training folder .*subset/train: '
                                    r'\d+ images not in the training folder')
    command, own = own_copy_command(message)
    assert own == f'{copy}-subset-train'
    make_copy(*command[1:3], workers=1, progress=False)
    check_copy(reader_of(subset), own)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob('*.jpg')) == before
    check_copy(reader_of(full), str(copy))


def test_an_original_replaced_after_copying_is_refused_whatever_its_time(tmp_path):
    train = write_folder(tmp_path / 'train', n_per_class=3)
    copy = fresh_copy(train, tmp_path / 'copy')
    old = os.stat(train / 'c0' / '0.jpg')
    photo_of_another_size = Image.open(train / 'c1' / '2.jpg').resize((200, 150))
    photo_of_another_size.save(train / 'c0' / '0.jpg', quality=90)
    os.utime(train / 'c0' / '0.jpg', ns=(old.st_atime_ns - 10**12, old.st_mtime_ns - 10**12))  # older than the copy
    refused(train, copy, r'1 training images that are not the ones the copy was made from .*c0/0.jpg')
    assert make_copy(str(train), str(copy), workers=1, progress=False)['written_this_run'] == 1
    check_copy(reader_of(train), str(copy))
    assert Image.open(copy / 'c0' / '0.jpg').size == (100, 75)
    # the same size and time, other bytes: the sample of content digests sees it (here every file is sampled)
    path, st = train / 'c1' / '1.jpg', os.stat(train / 'c1' / '1.jpg')
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    refused(train, copy, r'1 training images whose content differs from the source the copy was made from')
    check_copy(reader_of(train), str(copy), sample=0)  # what a start without the digests would let through
    m = make_copy(str(train), str(copy), workers=1, progress=False)
    assert m['written_this_run'] == 1 and m['kept_this_run'] == 5
    check_copy(reader_of(train), str(copy))


def test_a_cut_or_replaced_copy_file_is_refused_and_rewritten(tmp_path):
    train = write_folder(tmp_path / 'train', n_per_class=3)
    copy = fresh_copy(train, tmp_path / 'copy')
    cut = copy / 'c0' / '1.jpg'
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    refused(train, copy, r'1 copied files changed since they were written .*c0/1.jpg')
    make_copy(str(train), str(copy), workers=1, progress=False)
    replaced, st = copy / 'c1' / '0.jpg', os.stat(copy / 'c1' / '0.jpg')
    replaced.write_bytes(np.random.default_rng(0).bytes(st.st_size))  # same size, and the time put back
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))
    refused(train, copy, r'1 copied files whose content differs from what was written')
    m = make_copy(str(train), str(copy), workers=1, progress=False)
    assert m['written_this_run'] == 1 and m['kept_this_run'] == 5
    check_copy(reader_of(train), str(copy))
    assert same_bytes(copy, fresh_copy(train, tmp_path / 'reference'), ['c0/1.jpg', 'c1/0.jpg'])


def test_extra_and_missing_files_are_refused_and_the_rerun_fixes_both(tmp_path):
    train = write_folder(tmp_path / 'train', n_per_class=3)
    copy = fresh_copy(train, tmp_path / 'copy')
    (copy / 'c0' / 'zz.jpg').write_bytes((copy / 'c0' / '0.jpg').read_bytes())
    (copy / 'c1' / '2.jpg').unlink()
    refused(train, copy, r'1 copied files missing \(e.g. c1/2.jpg\); 1 images not in the training folder \(e.g. '
                         r'c0/zz.jpg\)')
    m = make_copy(str(train), str(copy), workers=1, progress=False)
    assert (m['written_this_run'], m['kept_this_run'], m['removed_this_run']) == (1, 5, 1)
    assert not (copy / 'c0' / 'zz.jpg').exists()
    check_copy(reader_of(train), str(copy))


def test_the_tool_does_not_touch_a_folder_that_is_not_a_copy(tmp_path, capsys):
    train = write_folder(tmp_path / 'train', n_per_class=2)
    other = write_folder(tmp_path / 'photos', n_per_class=2, seed=3)
    before = sorted(p.name for p in other.rglob('*'))
    with pytest.raises(SystemExit) as stop:
        copy_main([str(train), str(other), '--workers', '1'])
    assert stop.value.code == 2 and 'holds images and is not a reduced copy' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        copy_main([str(train), str(train / 'c0'), '--workers', '1'])  # inside the source
    assert 'overlap' in capsys.readouterr().err
    assert sorted(p.name for p in other.rglob('*')) == before


class Warned(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_unreadable_sources_are_skipped_named_and_read_from_the_original(tmp_path, capsys):
    """train.py skips a truncated JPEG or a zero-byte file with a warning; so does the tool, and the copy stays
    usable: the check accepts it, and a reduced batch reads such an image from the original (skipped there)."""
    train = write_folder(tmp_path / 'train', n_per_class=3)
    good = (train / 'c0' / '0.jpg').read_bytes()
    (train / 'c0' / 'cut.jpg').write_bytes(good[:len(good) // 3])
    (train / 'c1' / 'empty.jpg').write_bytes(b'')
    copy = tmp_path / 'copy'
    copy_main([str(train), str(copy), '--workers', '1'])
    out, err = capsys.readouterr()
    assert '8 images: 6 written' in out and '2 unreadable (skipped)' in out
    assert 'warning: 2 unreadable images skipped, as train.py skips them' in err
    assert 'c0/cut.jpg (OSError: image file is truncated' in err and 'c1/empty.jpg (empty file)' in err
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest['skipped'] == 2 and [r for r, _ in manifest['skipped_examples']] == ['c0/cut.jpg', 'c1/empty.jpg']
    checked = check_copy(reader_of(train), str(copy))
    assert checked.skipped == {'c0/cut.jpg', 'c1/empty.jpg'}
    copy_main([str(train), str(copy), '--workers', '1'])  # a rerun does not fail on them either
    assert '6 kept' in capsys.readouterr().out
    from timm.data import ImageDataset, create_loader
    from timm_trd.data.decode import attach
    loader = create_loader(ImageDataset(str(train)), input_size=(3, 64, 64), batch_size=4, is_training=True,
                           use_prefetcher=False, input_size_choices=[(3, 64, 64), (3, 32, 32)],
                           batch_choice_weights=[0.0, 1.0], batch_choice_seed=0, num_workers=0)
    attach(loader, reduced_copy=str(copy))
    assert loader.dataset.reduced.copy_path(str(train / 'c1' / 'empty.jpg')) is None
    warned = Warned()
    logging.getLogger('timm_trd').addHandler(warned)
    try:
        shapes = [tuple(x.shape) for x, _ in loader]
    finally:
        logging.getLogger('timm_trd').removeHandler(warned)
    assert sum(s[0] for s in shapes) == 8 and {s[-1] for s in shapes} == {32}
    assert sorted(m.split('). ')[1][:20] for m in warned.messages if 'Skipped sample' in m) == [
        'cannot identify imag', 'image file is trunca']


def mode_pictures(folder):
    """One file per image mode a dataset may hold, each with colour that a careless conversion changes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = np.asarray(photo_picture(rng))
    alpha = np.where(np.arange(rgb.shape[1]) < rgb.shape[1] // 2, 0, 255).astype(np.uint8)  # left half transparent
    Image.fromarray(np.dstack([rgb, np.broadcast_to(alpha, rgb.shape[:2])])).save(folder / 'rgba.png')
    palette = Image.fromarray(rgb).quantize(64)
    palette.info['transparency'] = 3
    palette.save(folder / 'palette.png', transparency=3)
    Image.fromarray(rgb).convert('LA').save(folder / 'la.png')
    Image.fromarray(rgb).convert('CMYK').save(folder / 'cmyk.jpg', quality=95)
    Image.fromarray((np.asarray(Image.fromarray(rgb).convert('L'), np.uint16) * 257)).save(folder / 'i16.png')
    Image.fromarray(rgb).convert('L').save(folder / 'grey.jpg', quality=95)
    return {'rgba.png': 'RGBA', 'palette.png': 'P', 'la.png': 'LA', 'cmyk.jpg': 'CMYK', 'i16.png': 'I;16',
            'grey.jpg': 'L'}


def photo_picture(rng):
    from test_decode import photo
    return photo(rng, 160, 120)


def test_every_image_mode_gives_train_pys_picture(tmp_path, capsys):
    """The copy holds what train.py's ImageDataset sees, ``convert('RGB')``, halved: the colours under an RGBA's
    transparency, a transparent palette's own colours, CMYK, LA, 16-bit and greyscale as Pillow converts them;
    PNG sources stay lossless PNG, JPEG sources JPEG; the tool says what it converted and wrote."""
    modes = mode_pictures(tmp_path / 'train' / 'c0')
    copy = tmp_path / 'copy'
    copy_main([str(tmp_path / 'train'), str(copy), '--workers', '1'])
    for name, mode in modes.items():
        source = Image.open(tmp_path / 'train' / 'c0' / name)
        assert source.mode == mode
        theirs = source.convert('RGB')  # what timm's ImageDataset gives train.py
        expected = np.asarray(theirs.resize((theirs.size[0] // 2, theirs.size[1] // 2), Image.Resampling.LANCZOS),
                              np.float64)
        ours = Image.open(copy / 'c0' / name)
        assert ours.format == ('JPEG' if name.endswith('.jpg') else 'PNG'), name
        got = np.asarray(ours.convert('RGB'), np.float64)
        if ours.format == 'PNG':
            assert np.array_equal(got, expected), name
        else:
            assert 10 * math.log10(255 ** 2 / np.mean((got - expected) ** 2)) > 30, name  # JPEG at quality 90
    out = capsys.readouterr().out
    assert 'converted to RGB before resizing, as timm\'s ImageDataset does' in out
    assert all(f'1 {mode}' in out for mode in modes.values())
    assert '2 JPEG quality 90 (from JPEG sources), 4 PNG (lossless, from other formats)' in out


def children_of(pid):
    found = []
    for stat in os.listdir('/proc'):
        if stat.isdigit():
            try:
                fields = open(f'/proc/{stat}/stat').read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat))
    return found


def alive(pid):
    try:
        state = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker processes through /proc (Linux)')
def test_sigkill_leaves_no_workers_and_the_next_run_resumes_and_clears_litter(tmp_path):
    import signal
    import time
    train = write_folder(tmp_path / 'train', n_per_class=30, size=(640, 480))
    copy = tmp_path / 'copy'
    tool = subprocess.Popen([sys.executable, '-m', 'timm_trd.data.reduced_copy.make', str(train), str(copy), '--workers', '2'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    deadline, workers = time.time() + 120, []
    while time.time() < deadline:
        workers = children_of(tool.pid)
        journal = copy / JOURNAL
        if len(workers) >= 2 and journal.exists() and len(journal.read_text().splitlines()) >= 5:
            break  # 4 images done, recorded
        time.sleep(0.05)
    assert tool.poll() is None, 'the tool finished before it could be killed; give it more images'
    tool.send_signal(signal.SIGKILL)
    tool.wait()
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    orphans = [w for w in workers if alive(w)]
    for w in orphans:
        os.kill(w, signal.SIGKILL)  # this test's own workers: end them before failing
    assert not orphans, 'workers outlived the killed tool'
    (copy / 'c0' / f'9.jpg{TEMP_MARK}12345').write_bytes(b'half a file')  # what a worker killed mid-write leaves
    with pytest.raises(TRDConfigError, match='not a finished reduced copy'):
        check_copy(reader_of(train), str(copy))
    m = make_copy(str(train), str(copy), workers=1, progress=False)
    assert m['kept_this_run'] >= 4 and m['written_this_run'] + m['kept_this_run'] == 60  # resumed
    assert m['temporary_removed_this_run'] >= 1 and not list(copy.rglob(f'*{TEMP_MARK}*'))
    check_copy(reader_of(train), str(copy))
    (copy / 'c1' / f'3.jpg{TEMP_MARK}777').write_bytes(b'')
    refused(train, copy, r'1 leftover temporary files of a killed run')


def test_the_copy_must_hold_the_runs_image_mode(data):
    refused(data / 'train', data / 'copy', r'holds RGB pictures and this run reads L \(--input-img-mode\); rerun '
                                           r'timm-trd-reduced-copy .* --input-img-mode L', img_mode='L')


def test_training_refuses_a_copy_of_the_validation_folder_until_the_named_rerun(tmp_path):
    """The issue's case end to end: ``timm-trd-reduced-copy DATA/val COPY``, then training on DATA/train with
    ``--trd-reduced-copy COPY``: one line, exit 2; the rerun it names; then training starts."""
    write_folder(tmp_path / 'data' / 'train', n_per_class=3, seed=0)
    write_folder(tmp_path / 'data' / 'val', n_per_class=3, seed=1)
    copy = tmp_path / 'copy'
    tool = [sys.executable, '-m', 'timm_trd.data.reduced_copy.make']
    subprocess.run([*tool, str(tmp_path / 'data' / 'val'), str(copy), '--workers', '1'], check=True,
                   capture_output=True)
    args = ['--data-dir', str(tmp_path / 'data'), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
            '--trd-mode', 'loader', '--trd-reduced-copy', str(copy), '-b', '2', '--epochs', '1']
    first = launch(*args)
    assert first.returncode == 2
    last = first.stderr.strip().splitlines()[-1]
    assert 'made from' in last and 'not the ones the copy was made from' in last
    command, own = own_copy_command(last)
    subprocess.run([*tool, *command[1:], '--workers', '1'], check=True, capture_output=True)
    second = launch(*[own if a == str(copy) else a for a in args])
    assert second.returncode == 0, second.stderr[-2000:]


# -- at cluster scale: staged copies, one check per node ----------------------------------------------------------

def _whole_seconds(folder):
    """What a filesystem (or a copy tool) that keeps whole seconds leaves of every file's time."""
    for path in folder.rglob('*'):
        if path.is_file():
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9))


@pytest.mark.parametrize('tool', ['tar', 'cp -a, whole seconds'])
def test_a_folder_and_its_copy_staged_together_are_accepted_and_a_changed_picture_refused(tmp_path, tool):
    from timm_trd.data.reduced_copy.check import check_copy
    origin = tmp_path / 'shared'
    write_folder(origin / 'train', n_per_class=3)
    fresh_copy(origin / 'train', origin / 'copy')
    staged = tmp_path / 'local'
    staged.mkdir()
    if tool == 'tar':  # GNU tar's default format keeps whole seconds
        subprocess.run(f'tar -C {origin} -cf - train copy | tar -C {staged} -xf -', shell=True, check=True)
    else:
        subprocess.run(['cp', '-a', str(origin / 'train'), str(origin / 'copy'), str(staged)], check=True)
        _whole_seconds(staged)
    assert all(os.stat(p).st_mtime_ns % 10**9 == 0 for p in (staged / 'train').rglob('*.jpg'))
    checked = check_copy(reader_of(staged / 'train'), str(staged / 'copy'))
    assert checked.dir == str(staged / 'copy')
    # a picture changed after staging: another time (and here size) is another file
    Image.open(staged / 'train' / 'c1' / '2.jpg').resize((90, 60)).save(staged / 'train' / 'c0' / '0.jpg')
    refused(staged / 'train', staged / 'copy', r'1 training images that are not the ones the copy was made from')
    # the same size and a time on the same second: the sampled content digests (here every file) still see it
    make_copy(str(staged / 'train'), str(staged / 'copy'), workers=1, progress=False)
    path = staged / 'train' / 'c1' / '1.jpg'
    st, data = os.stat(path), bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9))
    refused(staged / 'train', staged / 'copy', r'1 training images whose content differs from the source')
    # a time more than 2 s away from the record is not a staging's rounding
    os.utime(path, ns=(st.st_atime_ns, (st.st_mtime_ns // 10**9 - 5) * 10**9))
    refused(staged / 'train', staged / 'copy', r'1 training images that are not the ones the copy was made from')


def _node(rank, run_id, world=2):
    return {'TORCHELASTIC_RUN_ID': run_id, 'LOCAL_WORLD_SIZE': str(world), 'LOCAL_RANK': str(rank)}


def test_one_process_per_node_walks_the_copy_and_the_others_share_its_verdict(tmp_path, monkeypatch):
    import threading
    import uuid
    from timm_trd.data.reduced_copy import check as check_module
    train = write_folder(tmp_path / 'train', n_per_class=3)
    copy = fresh_copy(train, tmp_path / 'copy')
    walks = []
    scan = check_module.ci.scan_tree
    monkeypatch.setattr(check_module.ci, 'scan_tree', lambda *a: walks.append(a) or scan(*a))

    def node(run_id):
        """Local ranks 1 and 2 start first and wait; local rank 0 checks."""
        results = {}

        def rank(r):
            try:
                results[r] = check_module.check_copy_once(reader_of(train), str(copy), env=_node(r, run_id, 3))
            except TRDConfigError as e:
                results[r] = e
        threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 2)]
        for t in threads:
            t.start()
        rank(0)
        for t in threads:
            t.join(60)
        return results

    results = node(uuid.uuid4().hex)
    assert len(walks) == 1 and results[0].dir == str(copy)
    for r in (1, 2):
        assert results[r][:3] == results[0][:3] and np.array_equal(results[r].sizes, results[0].sizes)
    assert (results[1].sizes > 0).all()  # the originals' sizes, from the index
    (copy / 'c0' / '1.jpg').unlink()  # a bad copy: every rank stops with rank 0's line
    walks.clear()
    results = node(uuid.uuid4().hex)
    assert len(walks) == 1 and all(isinstance(e, TRDConfigError) for e in results.values())
    assert len({str(e) for e in results.values()}) == 1 and '\n' not in str(results[1])
    assert '1 copied files missing' in str(results[2])
    # a rank whose local rank 0 never writes a verdict gives up with one line, not a hang
    with pytest.raises(TRDConfigError, match='the check of local rank 0 wrote no verdict'):
        check_module.check_copy_once(reader_of(train), str(copy), env=_node(1, uuid.uuid4().hex), wait_s=0.5)
    # one process on its node (or no launcher id): it checks for itself
    walks.clear()
    with pytest.raises(TRDConfigError):
        check_module.check_copy_once(reader_of(train), str(copy), env={'LOCAL_WORLD_SIZE': '2', 'LOCAL_RANK': '1'})
    assert len(walks) == 1


def test_the_index_records_each_originals_size_and_the_loader_does_not_open_it(data):
    import random
    from timm_trd.data.reduced_copy.check import check_copy
    from timm_trd.data.reduced_copy.index import iter_index
    src, dst = data / 'train', data / 'copy' / 'train'
    recorded = {e.rel: (e.width, e.height) for _, e in iter_index(str(dst / INDEX)) if e is not None}
    assert recorded and all(Image.open(src / rel).size == size for rel, size in recorded.items())
    reader = reader_of(src)
    checked = check_copy(reader, str(dst))
    assert [tuple(v) for v in checked.sizes] == [Image.open(p).size for p, _ in reader.samples]
    reduced = ReducedLoading(unit_transform(24), 'RGB', copy_dir=checked.dir, source_root=str(src),
                             copy_scale=checked.scale, sizes=checked.sizes)
    for index in (0, 5):
        path = reader.samples[index][0]
        size = reduced.original_size(index)
        assert size == Image.open(path).size
        outs = []
        for fp, known in ((open(path, 'rb'), None), (None, size)):  # opened, as before; not opened, size known
            random.seed(index)
            torch.manual_seed(index)
            outs.append(reduced.load(fp, reduced.copy_path(path), size=known))
        assert torch.equal(outs[0], outs[1])
