"""Call 2, ``ddp`` and ``ddp-syncbn``: two processes on the one device through train.py (``torchrun``, every rank
on device 0 over gloo, see train_child.py), with TRD, ``--trd-bn-recal``, ``--model-ema`` and ``--dist-bn
reduce`` (``--sync-bn`` in the second); checked from the ranks' probe records and the log."""

import json
from functools import partial

from .common import end_memory, of_kind, trd_args


def phases(check) -> dict:
    """{phase name: fn(timeout, log)} for the runner."""
    return {variant: partial(run_ddp, check, variant) for variant in ('ddp', 'ddp-syncbn')}


def run_ddp(check, variant, timeout, log):
    if (reason := check.skip_reason('ddp_folder')):
        return dict(status='skipped', reason=reason)
    c = check.p['ddp']
    extra = trd_args(c) + ['--trd-bn-recal', str(c['bn_recal']), '--model-ema', '--dist-bn', 'reduce',
                           '--trd-mode', 'loader' if variant == 'ddp' else 'device']
    notes = []
    sync_bn = variant == 'ddp-syncbn'
    if sync_bn and check.p['device'] == 'cpu':
        sync_bn = False
        notes.append("no --sync-bn on the CPU (torch's SyncBatchNorm takes accelerator tensors only)")
    if sync_bn:
        extra.append('--sync-bn')
    workers = max(1, check.workers // c['world'])
    entry, ranks, text, _ = check.trainpy(variant, log, timeout, check.setup['ddp_folder'],
                                          check.setup['ddp_classes'], c, extra, world=c['world'], workers=workers)
    entry.update(parse_ddp(ranks, text, c, dist_bn=not sync_bn, sync_bn=sync_bn))
    if notes:
        entry['reason'] = '; '.join(notes)
    return entry


def parse_ddp(ranks, log, c, dist_bn: bool, sync_bn: bool):
    """Two processes on one device: what each rank recorded, and what the log says."""
    world, epochs = c['world'], c['epochs']
    starts = {r: of_kind(recs, 'start') for r, recs in ranks.items()}
    coll = {r: (of_kind(recs, 'collectives') or [{}])[0] for r, recs in ranks.items()}
    needed = ['broadcast', 'all_reduce', 'all_gather_object'] + (['all_gather'] if sync_bn else [])
    results = coll.get(0, {}).get('results', {})
    digests = {}
    for r, recs in ranks.items():
        for v in of_kind(recs, 'validate'):
            if 'digests' in v:
                digests.setdefault((v['epoch'], v['label']), {})[r] = v['digests']
    agree_lines = sum(f'all {world} ranks served the same sizes in the same order' in line for line in log.splitlines())
    recal = [line for line in log.splitlines() if f'on {world} processes, averaged' in line]
    checks = {
        f'{world} ranks': len(ranks) == world and all(s and s[0]['world'] == world for s in starts.values()),
        'collectives needed on this device': bool(results) and all(results.get(n, {}).get('ok') for n in needed),
        'every epoch on every rank': all(len(of_kind(recs, 'epoch')) == epochs for recs in ranks.values()),
        'ranks served the same sizes': agree_lines == epochs,
        'BN recalibration averaged (model and EMA)': (sum(' (EMA)' in line for line in recal) >= epochs
                                                      and sum(' (EMA)' not in line for line in recal) >= epochs),
        'same weights and buffers on every rank': bool(digests) and all(
            len(d) == world and len({json.dumps(x, sort_keys=True) for x in d.values()}) == 1
            for d in digests.values()),
    }
    if dist_bn:
        checks["train.py's distribute_bn ran"] = 'Distributing BatchNorm running means and vars' in log
    if sync_bn:
        checks['SyncBatchNorm converted'] = 'Converted model to use Synchronized BatchNorm' in log
    return dict(checks=checks, collectives={n: r.get('ok') if r.get('ok') else r.get('error', False)
                                            for n, r in results.items()},
                collectives_device=coll.get(0, {}).get('device'), backend=coll.get(0, {}).get('backend'),
                backend_asked=coll.get(0, {}).get('backend_asked'),
                digests={f'{e} {label}': d for (e, label), d in sorted(digests.items())},
                memory={r: end_memory(recs) for r, recs in ranks.items()})
