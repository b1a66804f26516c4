#!/usr/bin/env python3
"""timm's train.py with TRD, watched: what the GPU check needs from a train.py run besides its log.

    [torchrun --nproc_per_node N] experiments/gpu_check/train_child.py --probe-out PREFIX [--one-device] -- ARGS
    torchrun --nproc_per_node 2 experiments/gpu_check/train_child.py --probe-out PREFIX --collectives-only

ARGS go to ``timm-trd-train`` unchanged (``timm_trd.cli.launcher.main``: the same train.py, the same hooks). Each
process appends JSON lines to ``PREFIX.rank<R>.jsonl``:

- ``start``: rank, world size, the device and backend train.py asked for;
- ``collectives`` (``--one-device``): which torch.distributed collectives work on this device's tensors;
- ``epoch``: seconds of train_one_epoch, the input sizes the model was trained on (eager runs), torch.compile's
  graphs built in the epoch, and the accelerator's memory so far (max reserved / allocated, allocator retries);
- ``validate``: seconds (``--trd-bn-recal``'s recalibration runs inside it), graphs built, top-1, and in a
  distributed run a digest of the model's parameters and of its buffers, to compare the ranks;
- ``end``: memory, dynamo's counters and compile times.

``--one-device`` runs every rank on one accelerator. NCCL refuses two ranks on one GPU, so the process group is
gloo, which takes CUDA tensors for its collectives by copying them through host memory, and every rank uses
device 0 (timm would pick ``cuda:LOCAL_RANK``). The group's timeout is 120 s, so that a collective that fails
on one rank ends the run instead of hanging it.
"""

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

GROUP_TIMEOUT_S = 120


class Probe:
    """Appends one JSON line per event to this rank's file."""

    def __init__(self, prefix: str):
        self.rank = int(os.environ.get('RANK', 0))
        self.path = Path(f'{prefix}.rank{self.rank}.jsonl')
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields):
        with open(self.path, 'a') as f:
            f.write(json.dumps({'kind': kind, 'time': time.time(), **fields}, default=str) + '\n')


def read_probe(prefix) -> dict:
    """{rank: [records]} from the files a run's processes wrote."""
    prefix = Path(prefix)
    ranks = {}
    for path in sorted(prefix.parent.glob(prefix.name + '.rank*.jsonl')):
        rank = int(path.name[len(prefix.name) + len('.rank'):-len('.jsonl')])
        ranks[rank] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return ranks


# -- what is recorded -------------------------------------------------------------------------------
def memory() -> dict:
    """The CUDA caching allocator's peaks and retries on the current device (empty without CUDA)."""
    import torch
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    stats = torch.cuda.memory_stats()
    return dict(max_reserved=torch.cuda.max_memory_reserved(), max_allocated=torch.cuda.max_memory_allocated(),
                reserved=torch.cuda.memory_reserved(), alloc_retries=int(stats.get('num_alloc_retries', 0)),
                ooms=int(stats.get('num_ooms', 0)))


def compiled() -> dict:
    """Dynamo's frames and graphs so far (zeros when nothing imported dynamo)."""
    if 'torch._dynamo' not in sys.modules:
        return dict(frames=0, graphs=0)
    from torch._dynamo.utils import counters
    return dict(frames=int(counters['frames']['total']), graphs=int(counters['stats']['unique_graphs']))


def compile_report() -> dict:
    if 'torch._dynamo' not in sys.modules:
        return {}
    from torch._dynamo.utils import compile_times, counters
    report = {name: {k: v for k, v in values.items() if isinstance(v, (int, float))}
              for name, values in counters.items() if name in ('frames', 'stats', 'inductor', 'graph_break')}
    try:
        names, seconds = compile_times(repr='csv', aggregate=True)
        report['compile_times_s'] = {n: float(s) for n, s in zip(names, seconds)}
    except Exception as e:  # noqa: BLE001 - a torch without this form of compile_times
        report['compile_times_error'] = f'{type(e).__name__}: {e}'
    return report


def state_digests(model) -> dict:
    """sha1 of the bare model's parameters and of its buffers, bit for bit, in state_dict order."""
    import torch
    from timm.utils import unwrap_model
    bare = unwrap_model(model)
    digests = {}
    for kind, tensors in (('params', bare.named_parameters()), ('buffers', bare.named_buffers())):
        h = hashlib.sha1()
        for name, t in tensors:
            h.update(name.encode())
            h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
        digests[kind] = h.hexdigest()[:16]
    return digests


def synchronize():
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def is_distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# -- collectives on one device ----------------------------------------------------------------------
def probe_collectives(device) -> dict:
    """Each collective DDP, timm or the plugin could use, on tensors of ``device``: works and gives the right
    values, or the error it raised. Every rank runs the same sequence."""
    import torch
    import torch.distributed as dist
    rank, world = dist.get_rank(), dist.get_world_size()
    total = world * (world + 1) / 2  # rank r contributes r + 1

    def mine():
        return torch.full((4,), float(rank + 1), device=device)

    def broadcast():
        x = mine()
        dist.broadcast(x, src=0)
        return bool((x == 1).all())

    def all_reduce():
        x = mine()
        dist.all_reduce(x)
        return bool((x == total).all())

    def reduce():
        x = mine()
        dist.reduce(x, dst=0)
        return rank != 0 or bool((x == total).all())

    def all_gather():
        out = [torch.empty(4, device=device) for _ in range(world)]
        dist.all_gather(out, mine())
        return [int(o[0]) for o in out] == list(range(1, world + 1))

    def all_gather_into_tensor():
        out = torch.empty(world * 4, device=device)
        dist.all_gather_into_tensor(out, mine())
        return out.view(world, 4)[:, 0].tolist() == list(range(1, world + 1))

    def reduce_scatter_tensor():
        out = torch.empty(4, device=device)
        dist.reduce_scatter_tensor(out, torch.full((world * 4,), float(rank + 1), device=device))
        return bool((out == total).all())

    def all_gather_object():
        out = [None] * world
        dist.all_gather_object(out, {'rank': rank})
        return [o['rank'] for o in out] == list(range(world))

    def barrier():
        dist.barrier()
        return True

    results = {}
    warnings.filterwarnings('ignore', category=FutureWarning)  # torch 2.14 renames two of them; 2.11 has the old
    for fn in (broadcast, all_reduce, reduce, all_gather, all_gather_into_tensor, reduce_scatter_tensor,
               all_gather_object, barrier):
        start = time.perf_counter()
        try:
            ok = fn()
            synchronize()
            results[fn.__name__] = dict(ok=ok, ms=round(1e3 * (time.perf_counter() - start), 2))
        except Exception as e:  # noqa: BLE001 - what does not work is the finding
            results[fn.__name__] = dict(ok=False, error=f'{type(e).__name__}: {e}'.splitlines()[0][:300])
    return dict(device=str(device), backend=dist.get_backend(), world=world, results=results)


def one_device(probe: Probe):
    """Every rank on device 0, over gloo; the collectives probed right after the group starts."""
    import torch
    import torch.distributed as dist
    os.environ['LOCAL_RANK'] = '0'  # timm's init_distributed_device uses cuda:LOCAL_RANK
    start_group = dist.init_process_group

    def init_process_group(backend=None, *args, **kwargs):
        kwargs.setdefault('timeout', datetime.timedelta(seconds=GROUP_TIMEOUT_S))
        start_group('gloo', *args, **kwargs)
        device = torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
        probe.write('collectives', backend_asked=backend, **probe_collectives(device))

    dist.init_process_group = init_process_group


# -- watching train.py --------------------------------------------------------------------------------
def watch(module, probe: Probe, count_sizes: bool):
    """Wrap train.py's train_one_epoch and validate (outside the plugin's own wrappers)."""
    import torch
    from timm.utils import unwrap_model
    train, validate = module.train_one_epoch, module.validate
    state = dict(epoch=None)

    def train_one_epoch(epoch, model, *args, **kwargs):
        state['epoch'] = epoch
        sizes, handle = {}, None
        if count_sizes:  # the input sizes trained on, from a hook on the bare model (eager runs only)
            def count(module_, inputs):  # training steps only: not the BatchNorm recalibration (no grad)
                if module_.training and inputs and torch.is_grad_enabled():
                    key = 'x'.join(str(d) for d in inputs[0].shape[-2:])
                    sizes[key] = sizes.get(key, 0) + 1
            handle = unwrap_model(model).register_forward_pre_hook(count)
        before, start = compiled(), time.perf_counter()
        try:
            metrics = train(epoch, model, *args, **kwargs)
            synchronize()
        finally:
            if handle is not None:
                handle.remove()
        after = compiled()
        probe.write('epoch', epoch=epoch, seconds=time.perf_counter() - start, sizes=sizes,
                    graphs=after['graphs'] - before['graphs'], frames=after['frames'] - before['frames'],
                    memory=memory())
        return metrics

    def validate_(model, *args, **kwargs):
        before, start = compiled(), time.perf_counter()
        metrics = validate(model, *args, **kwargs)
        synchronize()
        after = compiled()
        record = dict(epoch=state['epoch'], label='ema' if 'EMA' in str(kwargs.get('log_suffix', '')) else 'model',
                      seconds=time.perf_counter() - start, graphs=after['graphs'] - before['graphs'],
                      top1=float(metrics['top1']) if metrics and 'top1' in metrics else None)
        if is_distributed():
            record['digests'] = state_digests(model)
        probe.write('validate', **record)
        return metrics

    module.train_one_epoch, module.validate = train_one_epoch, validate_


def run_train(probe: Probe, rest):
    from timm_trd.cli import launcher
    install = launcher.install
    count_sizes = '--torchcompile' not in rest

    def install_and_watch(module):
        plugin = install(module)
        watch(module, probe, count_sizes)
        return plugin

    launcher.install = install_and_watch
    code = 0
    try:
        launcher.main(list(rest))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    finally:
        probe.write('end', exit=code, memory=memory(), compile=compile_report())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--probe-out', required=True, help='prefix of the per-rank JSON-lines files')
    ap.add_argument('--one-device', action='store_true', help='every rank on device 0, process group over gloo')
    ap.add_argument('--collectives-only', action='store_true',
                    help='start the process group (env://, as torchrun sets it), probe the collectives, stop')
    args = ap.parse_args(own)
    probe = Probe(args.probe_out)
    import torch
    import timm
    probe.write('start', world=int(os.environ.get('WORLD_SIZE', 1)), local_rank=os.environ.get('LOCAL_RANK'),
                one_device=args.one_device, torch=torch.__version__, timm=timm.__version__,
                cuda=torch.cuda.is_available(), argv=rest)
    if args.one_device or args.collectives_only:
        one_device(probe)
    if args.collectives_only:
        import torch.distributed as dist
        dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')
        dist.destroy_process_group()
        return
    run_train(probe, rest)


if __name__ == '__main__':
    main()
