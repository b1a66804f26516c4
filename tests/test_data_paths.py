"""Both data paths through timm's real create_loader: each step's batch has the planned size."""
import numpy as np
import pytest
import torch
from timm.data import FastCollateMixup

from conftest import PATHS
from timm_trd import TRDLoader, downsample, install
from timm_trd.data.resize import resize_device
from timm_trd.plan.schedule import TRDSchedule

try:
    from timm.data import ScheduledTransformDataset
except ImportError:  # timm < 1.0.29: only the device path exists
    ScheduledTransformDataset = ()

FULL, SMALL = 40, 24


def run(module, monkeypatch, *argv):
    monkeypatch.setattr('sys.argv', ['mini_train.py', *argv])
    plugin = install(module)
    return plugin, module.main()


def expected_shapes(plugin, epoch, batch_size):
    plan = plugin.loader.plan(epoch)
    return [[batch_size, 3, SMALL, SMALL] if r else [batch_size, 3, FULL, FULL] for r in plan]


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('prefetcher', [True, False], ids=['prefetcher', 'no-prefetcher'])
@pytest.mark.parametrize('mixup', [False, True], ids=['plain', 'mixup'])
def test_every_step_has_the_planned_size(mini_train, image_folder, monkeypatch, path, prefetcher, mixup):
    argv = ['--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '0.5', '--trd-size', str(SMALL),
            '--trd-mode', path, '-b', '8', '--epochs', '2', '--workers', '1']
    if not prefetcher:
        argv.append('--no-prefetcher')
    if mixup:
        argv += ['--mixup', '0.8', '--cutmix', '1.0']
    plugin, result = run(mini_train, monkeypatch, *argv)

    assert isinstance(plugin.loader, TRDLoader) and plugin.loader.path == path
    inner = plugin.loader.loader
    assert isinstance(inner.dataset, ScheduledTransformDataset) == (path == 'loader')
    if mixup and prefetcher:
        assert isinstance(inner.loader.collate_fn, FastCollateMixup)
    batches = (4 * 24) // 8
    for epoch in range(2):
        assert result['shapes'][str(epoch)] == expected_shapes(plugin, epoch, 8)
        metrics = result['epochs'][epoch]
        assert metrics['trd_reduced_batches'] == 6 and metrics['trd_batches'] == batches
        assert metrics['trd_compute'] == pytest.approx(1 - 0.5 * (1 - plugin.cost.reduced_ratio), abs=1e-6)
    # the two epochs reduce different batches
    assert not np.array_equal(plugin.loader.plan(0), plugin.loader.plan(1))


def test_channels_last_and_epoch_granularity(mini_train, image_folder, monkeypatch):
    plugin, result = run(
        mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '0.5',
        '--trd-size', str(SMALL), '--trd-granularity', 'epoch', '--epochs', '4', '--channels-last', '--trd-mode', 'device')
    sizes = {e: {tuple(s[2:]) for s in result['shapes'][str(e)]} for e in range(4)}
    reduced = plugin.schedule.reduced_epochs()
    assert len(reduced) == 2
    assert all(sizes[e] == ({(SMALL, SMALL)} if e in reduced else {(FULL, FULL)}) for e in range(4))
    assert [m['trd_reduced_batches'] for m in result['epochs']] == [12 if e in reduced else 0 for e in range(4)]


def test_full_resolution_tail_runs_at_full_size(mini_train, image_folder, monkeypatch):
    plugin, result = run(
        mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '1',
        '--trd-size', str(SMALL), '--epochs', '2', '--cooldown-epochs', '1', '--trd-full-res-epochs', '2')
    assert [m['trd_reduced_batches'] for m in result['epochs']] == [12, 0, 0]
    assert {tuple(s[2:]) for s in result['shapes']['2']} == {(FULL, FULL)}


def test_cumulative_saving_follows_the_plan(mini_train, image_folder, monkeypatch):
    plugin, result = run(
        mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '1',
        '--trd-size', str(SMALL), '--epochs', '2', '--trd-full-res-epochs', '1')
    r = plugin.cost.reduced_ratio
    assert plugin.cost.source == 'flops' and 0.2 < r < 0.5  # (24/40)^2 = 0.36 plus the fixed-size head
    assert result['epochs'][0]['trd_saved_cum'] == pytest.approx(1 - r, abs=1e-6)
    assert result['epochs'][1]['trd_saved_cum'] == pytest.approx((1 - r) / 2, abs=1e-6)


def test_trd_off_leaves_the_loader_untouched(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL), '--epochs', '1')
    assert plugin.loader is None and not plugin.config.enabled
    assert list(result['epochs'][0]) == ['loss']
    assert {tuple(s[2:]) for s in result['shapes']['0']} == {(FULL, FULL)}


def test_trd_off_gives_the_same_losses_as_no_plugin(image_folder, monkeypatch):
    from timm_trd.cli.train_script import load_train_module
    from conftest import MINI_TRAIN
    losses = []
    for name, plugged in (('plain_run', False), ('plugged_run', True)):
        module = load_train_module(MINI_TRAIN, name=name)
        monkeypatch.setattr('sys.argv', ['mini_train.py', '--data-dir', str(image_folder), '--img-size', str(FULL),
                                         '--epochs', '1', '--workers', '1', '--num-classes', '4'])
        if plugged:
            install(module)
        torch.manual_seed(0)
        losses.append(module.main()['epochs'][0]['loss'])
    assert losses[0] == losses[1]


def test_default_size_is_half_the_training_size(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--trd-prob', '0.5', '--epochs', '1')
    assert plugin.loader.reduced_hw == (FULL // 2, FULL // 2)
    assert {tuple(s[2:]) for s in result['shapes']['0']} == {(FULL, FULL), (FULL // 2, FULL // 2)}


def test_auto_uses_the_device_path_for_a_streamed_dataset(mini_train, image_folder, monkeypatch):
    plugin, result = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                         '--trd-prob', '0.5', '--trd-size', str(SMALL), '--epochs', '1', '--iterable')
    assert plugin.loader.path == 'device'
    assert result['shapes']['0'] == expected_shapes(plugin, 0, 8)


def test_downsample_is_antialiased_and_keeps_dtype_and_layout():
    # a one-pixel checkerboard has no shape, only texture: the antialiased half-size image is flat grey
    board = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    batch = board.float().expand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small = downsample(batch, (16, 16))
    assert small.shape == (2, 3, 16, 16)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.02)  # (the corners see the border)
    aliased = torch.nn.functional.interpolate(batch, size=(16, 16), mode='nearest')
    assert (aliased - 0.5).abs().max() > 0.4  # plain subsampling keeps the texture as noise
    assert small.is_contiguous(memory_format=torch.channels_last)
    half = downsample(batch.to(torch.bfloat16), (16, 12))
    assert half.dtype == torch.bfloat16 and half.shape == (2, 3, 16, 12)
    # a large square keeps its shape: its mean brightness is kept
    square = torch.zeros(1, 1, 32, 32)
    square[..., 8:24, 8:24] = 1
    assert downsample(square, (16, 16)).mean().item() == pytest.approx(square.mean().item(), abs=1e-6)


def test_checked_values_go_back_into_args_as_numbers(mini_train, image_folder, monkeypatch):
    plugin, _ = run(mini_train, monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                    '--trd-prob', '0.5', '--trd-size', '24', '20', '--trd-mode', 'DEVICE', '--epochs', '1')
    args = plugin.args
    assert (args.trd_prob, args.trd_size, args.trd_mode, args.trd_full_res_epochs) == (0.5, [24, 20], 'device', 0)


# -- where the device path shrinks a batch ----------------------------------------------------------------------------

def test_a_cpu_batch_is_shrunk_on_the_training_device():
    cpu = torch.device('cpu')
    assert resize_device(cpu, 'cuda') == torch.device('cuda')  # moved first, as train.py would move it next
    assert resize_device(cpu, torch.device('cuda', 1)) == torch.device('cuda', 1)
    assert resize_device(cpu, 'cpu') == cpu and resize_device(cpu, None) == cpu  # training on the CPU
    assert resize_device(torch.device('cuda', 0), 'cuda') == torch.device('cuda', 0)  # after the prefetcher: there


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _serve(device, batches, monkeypatch):
    """Serve CPU ``batches`` on the device path (every one reduced) for training on ``device``; the devices the
    resizes ran on."""
    import timm_trd.data.loader as loader_module
    ran_on = []

    def spy(images, size):
        ran_on.append(images.device)
        return downsample(images, size)
    monkeypatch.setattr(loader_module, 'downsample', spy)
    loader = TRDLoader(_Batches(batches), TRDSchedule(prob=1.0, total_epochs=1), (FULL, FULL), (SMALL, SMALL),
                       resize=True, device=device)
    return list(loader), ran_on


def test_the_device_path_moves_then_shrinks_on_a_device_that_is_not_the_cpu(monkeypatch):
    # 'meta' stands for an accelerator on a CPU-only machine: a real device that is not the CPU
    batches = [(torch.rand(4, 3, FULL, FULL), torch.arange(4)) for _ in range(3)]
    served, ran_on = _serve(torch.device('meta'), batches, monkeypatch)
    assert ran_on == [torch.device('meta')] * 3  # shrunk there, not on the CPU
    assert all(x.device.type == 'meta' and t.device.type == 'meta' and tuple(x.shape) == (4, 3, SMALL, SMALL)
               for x, t in served)


def test_training_on_the_cpu_shrinks_on_the_cpu_exactly_as_before(monkeypatch):
    batches = [(torch.rand(4, 3, FULL, FULL), torch.arange(4)) for _ in range(3)]
    served, ran_on = _serve(torch.device('cpu'), batches, monkeypatch)
    assert ran_on == [torch.device('cpu')] * 3
    for (x, t), (before, target) in zip(served, batches):
        expected = torch.nn.functional.interpolate(before, size=(SMALL, SMALL), mode='bilinear', align_corners=False,
                                                   antialias=True)
        assert torch.equal(x, expected) and t is target


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device: the CPU-only case is tested with meta')
def test_on_cuda_the_result_matches_the_cpu_resize(monkeypatch):
    batches = [(torch.rand(4, 3, FULL, FULL), torch.arange(4)) for _ in range(2)]
    served, ran_on = _serve(torch.device('cuda'), batches, monkeypatch)
    assert all(d.type == 'cuda' for d in ran_on)
    for (x, _), (before, _) in zip(served, batches):
        assert torch.allclose(x.cpu(), downsample(before, (SMALL, SMALL)), atol=1e-5)


@pytest.mark.parametrize('prefetcher', [True, False], ids=['prefetcher', 'no-prefetcher'])
def test_the_plugin_shrinks_on_the_device_train_py_trains_on(mini_train, image_folder, monkeypatch, prefetcher):
    argv = ['--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '0.5', '--trd-size', str(SMALL),
            '--trd-mode', 'device', '--epochs', '1'] + ([] if prefetcher else ['--no-prefetcher'])
    plugin, result = run(mini_train, monkeypatch, *argv)
    assert plugin.loader.device == torch.device('cpu')  # the device train.py handed create_loader
    assert result['shapes']['0'] == expected_shapes(plugin, 0, 8)
