#!/usr/bin/env python3
"""What one BatchNorm recalibration costs against one training epoch, for a recipe's settings, measured on the CPU.

Per image, at the recipe's sizes and with its model: a training step (forward, backward, the recipe's optimizer)
at the full and at the reduced size, a recalibration forward pass (train mode, no gradients, full size), and the
loading of one training image (decode + the recipe's training transform at full size, in one process). From them:

- the CPU ratio, one recalibration (``ceil(N / GPUs)`` batches per process) to one epoch (ImageNet's 1,281,167
  images over the launch's global batch, at the recipe's share of reduced batches), same images per step;
- the same ratio over the whole run for the recipe's schedule (``--trd-bn-recal-every`` / ``-last``, plus the
  recalibration after the last epoch).

The GPU arithmetic the recipe headers give is printed too, from assumptions passed as options (stated in the
output): a GPU's training throughput at full size, how much faster a train-mode forward pass is than a step, and
how many images a worker loads per second; a recalibration on the GPU is bound by the slower of its forward
passes and its loading (``min(--workers, batches per process)`` persistent workers).

    OMP_NUM_THREADS=1 python experiments/bn_recal_cost.py -c recipes/resnet50_a1_trd.yaml --batch 4
"""

import argparse
import math
import time

import torch
import yaml

IMAGENET = 1_281_167


def _seconds(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(recipe: dict, batch: int, repeats: int) -> dict:
    """Seconds per image: train step at full and reduced size, recalibration forward, loading one image."""
    import io
    import numpy as np
    from PIL import Image
    from timm.data import create_transform
    from timm.models import create_model
    from timm.optim import create_optimizer_v2
    full, reduced = int(recipe['img_size']), int(recipe['trd_size'])
    model = create_model(recipe['model'], num_classes=1000)
    optimizer = create_optimizer_v2(model, opt=recipe['opt'], lr=float(recipe.get('lr', 0.1) or 0.1),
                                    weight_decay=float(recipe['weight_decay']))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(size):
        def run():
            x = torch.randn(batch, 3, size, size)
            loss = loss_fn(model(x), torch.randint(0, 1000, (batch,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    def recal():
        with torch.no_grad():
            model(torch.randn(batch, 3, full, full))

    model.train()
    figures = {'train_full': _seconds(step(full), repeats) / batch,
               'train_reduced': _seconds(step(reduced), repeats) / batch,
               'recal_forward': _seconds(recal, repeats) / batch}
    # an ImageNet-sized JPEG (500x375, its median), noise-free so it compresses like a photograph
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    pixels = (np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1) + rng.normal(0, 8, (375, 500, 3))) % 255
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, 'JPEG', quality=90)
    data = buffer.getvalue()
    transform = create_transform(full, is_training=True, auto_augment=recipe.get('aa'),
                                 interpolation=recipe.get('train_interpolation', 'bilinear'),
                                 re_prob=float(recipe.get('reprob', 0.0)))

    def load():
        for _ in range(8):
            transform(Image.open(io.BytesIO(data)).convert('RGB'))
    figures['load'] = _seconds(load, 2) / 8
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-c', '--recipe', required=True)
    parser.add_argument('--batch', type=int, default=4, help='images per measured step on the CPU (default: 4)')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--gpus', type=int, default=8, help='the launch the recipe header assumes (default: 8)')
    parser.add_argument('--bn-recal', type=int, default=None, help='N (default: the recipe\'s trd_bn_recal)')
    parser.add_argument('--every', type=int, default=None, help='K (default: the recipe\'s)')
    parser.add_argument('--last', type=int, default=None, help='E (default: the recipe\'s)')
    parser.add_argument('--gpu-train-ips', type=float, default=2600.0,
                        help='assumed: full-size training images/s per GPU (A100, AMP, channels_last ResNet-50)')
    parser.add_argument('--gpu-forward-speedup', type=float, default=3.0,
                        help='assumed: a train-mode forward pass per image is this many times faster than a step')
    parser.add_argument('--worker-ips', type=float, default=190.0,
                        help='assumed: training images a loader worker decodes and augments per second (GPU server)')
    args = parser.parse_args(argv)
    with open(args.recipe) as f:
        recipe = yaml.safe_load(f)
    n = args.bn_recal if args.bn_recal is not None else int(recipe.get('trd_bn_recal', 0))
    every = args.every if args.every is not None else int(recipe.get('trd_bn_recal_every', 1))
    last = args.last if args.last is not None else int(recipe.get('trd_bn_recal_last', 0))
    epochs, batch, prob = int(recipe['epochs']), int(recipe['batch_size']), float(recipe['trd_prob'])
    share = (recipe['trd_size'] / recipe['img_size']) ** 2
    steps = IMAGENET // (args.gpus * batch)
    per_rank = math.ceil(n / args.gpus)
    workers = min(int(recipe.get('workers', 0) or 0), per_rank)
    from timm_trd.plugin.bn_recal import recal_due
    count = sum(recal_due(e, epochs, every, last) for e in range(epochs))

    m = measure(recipe, args.batch, args.repeats)
    epoch_cpu = steps * batch * ((1 - prob) * m['train_full'] + prob * m['train_reduced'])
    recal_cpu = per_rank * batch * (m['recal_forward'] + m['load'])
    print(f'{args.recipe}: N {n} in all = {per_rank} batches of {batch} per process on {args.gpus} GPUs; '
          f'{count} recalibrations in {epochs} epochs (every {every}, last {last}, and after the last epoch)')
    print(f'CPU, per image (batch {args.batch}, {torch.get_num_threads()} thread(s)): train step '
          f'{recipe["img_size"]} px {m["train_full"]:.3f} s, {recipe["trd_size"]} px {m["train_reduced"]:.3f} s; '
          f'recalibration forward {m["recal_forward"]:.3f} s; loading (decode + training transform) {m["load"]*1e3:.1f} ms')
    print(f'CPU ratio, one recalibration / one epoch: {recal_cpu / epoch_cpu:.3%}; over the run: '
          f'{count * recal_cpu / (epochs * epoch_cpu):.3%}')
    epoch_gpu = steps * batch / args.gpu_train_ips * ((1 - prob) + prob * share)
    forward_gpu = per_rank * batch / (args.gpu_train_ips * args.gpu_forward_speedup)
    load_gpu = per_rank * batch / (max(workers, 1) * args.worker_ips)
    recal_gpu = max(forward_gpu, load_gpu)
    print(f'GPU arithmetic (assumed {args.gpu_train_ips:.0f} img/s training per GPU, forward {args.gpu_forward_speedup:g}x '
          f'faster, {args.worker_ips:.0f} img/s per worker, {workers} workers): epoch {epoch_gpu:.1f} s; recalibration '
          f'{recal_gpu:.2f} s ({"loading" if load_gpu >= forward_gpu else "forward"}-bound; forward {forward_gpu:.2f} s, '
          f'loading {load_gpu:.2f} s) = {recal_gpu / epoch_gpu:.2%} of an epoch; over the run '
          f'{count * recal_gpu / (epochs * epoch_gpu):.3%} ({count * recal_gpu:.0f} s)')


if __name__ == '__main__':
    main()
