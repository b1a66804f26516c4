"""Call 1, accuracy: the three arms (``acc-baseline``, ``acc-trd``, ``acc-sizes``) trained from scratch through
train.py with the same recipe, each read from its probe, summary.csv and log, and compared with the baseline."""

import statistics
from functools import partial

from .common import end_memory, epoch_times, read_summary, trd_args
from .plan import ACC_ARMS, MEMORY_BOUND


def phases(check) -> dict:
    """{phase name: fn(timeout, log)} for the runner."""
    return {arm: partial(run_arm, check, arm) for arm in ACC_ARMS}


def run_arm(check, arm, timeout, log):
    if (reason := check.skip_reason('acc_folder')):
        return dict(status='skipped', reason=reason)
    c = check.p['acc']
    extra = ['--opt', 'sgd', '--lr', str(c['lr']), '--weight-decay', str(c['weight_decay']),
             '--warmup-epochs', str(c['warmup']), '--sched-on-updates', '--crop-pct', '1.0']
    if arm == 'acc-trd':
        extra += trd_args(c) + ['--trd-bn-recal', str(c['bn_recal'])]
    elif arm == 'acc-sizes':
        extra += ['--train-img-sizes', str(c['img']), str(c['trd']),
                  '--train-size-probs', str(1 - c['prob']), str(c['prob'])]
    entry, ranks, text, out = check.trainpy(arm, log, timeout, check.setup['acc_folder'],
                                            check.setup['acc_classes'], c, extra)
    entry.update(parse_acc(ranks.get(0, []), read_summary(out), text, c))
    if entry['status'] == 'ok' and len(entry['epochs']) != c['epochs']:
        entry.update(status='failed', reason=f"{len(entry['epochs'])} epochs recorded, expected {c['epochs']}")
    return entry


def parse_acc(records, summary, log, c):
    """One accuracy arm: top-1 per epoch (summary.csv), times per epoch and the sizes trained on (the probe),
    memory at the end."""
    times = epoch_times(records)
    top1 = [float(row['eval_top1']) for row in summary if row.get('eval_top1')]
    epochs = []
    for i, t in enumerate(times['epoch_times']):
        reduced = sum(n for k, n in t['sizes'].items() if k != f"{c['img']}x{c['img']}")
        total = sum(t['sizes'].values())
        epochs.append(dict(t, top1=top1[i] if i < len(top1) else None,
                           reduced_share=reduced / total if total else None))
    shares = [e['reduced_share'] for e in epochs if e['reduced_share'] is not None]
    recal = [line for line in log.splitlines() if 'TRD: BatchNorm statistics' in line]
    return dict(epochs=epochs, top1_last=top1[-1] if top1 else None, top1_best=max(top1) if top1 else None,
                train_s_per_epoch=times['train_s_per_epoch'], epoch_s_per_epoch=times['epoch_s_per_epoch'],
                reduced_share=statistics.mean(shares) if shares else None, bn_recal_lines=len(recal),
                memory=end_memory(records), trd_lines=[ln[ln.index('TRD:'):] for ln in log.splitlines()
                                                       if 'TRD:' in ln][:4])


def compare_arms(phases):
    """The arms against the baseline: top-1 at the last epoch all finished, time ratios, the memory bound."""
    arms = {name: phases[name] for name in ACC_ARMS if phases.get(name, {}).get('epochs')}
    base = arms.get('acc-baseline')
    if not base:
        return {}
    common = min(len(a['epochs']) for a in arms.values())
    out = dict(common_epochs=common, arms={})
    base_mem = base.get('memory', {})
    for name, a in arms.items():
        row = dict(top1_common=a['epochs'][common - 1]['top1'])
        for key in ('train_s_per_epoch', 'epoch_s_per_epoch'):
            if a.get(key) and base.get(key):
                row[key.replace('_s_per_epoch', '_time_ratio')] = a[key] / base[key]
        mem = a.get('memory', {})
        if mem.get('max_reserved') and base_mem.get('max_reserved'):
            row['reserved_over_baseline'] = mem['max_reserved'] / base_mem['max_reserved'] - 1
            row['allocated_over_baseline'] = mem['max_allocated'] / base_mem['max_allocated'] - 1
            row['memory_bound_holds'] = (row['reserved_over_baseline'] <= MEMORY_BOUND
                                         and mem.get('alloc_retries', 0) == 0)
        out['arms'][name] = row
    return out
