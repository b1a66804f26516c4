"""Call 2, ``compile-default`` and ``compile-reduce-overhead``: train.py's ``--torchcompile`` with TRD; read: the
graphs built per epoch in training and validation, recompiles and their guards, graph breaks, compile time."""

import re
from functools import partial

from .common import EPOCH_LINE, end_memory, of_kind, trd_args


def phases(check) -> dict:
    """{phase name: fn(timeout, log)} for the runner."""
    return {f'compile-{mode}': partial(run_compile, check, mode) for mode in ('default', 'reduce-overhead')}


def run_compile(check, mode, timeout, log):
    if (reason := check.skip_reason('compile_folder')):
        return dict(status='skipped', reason=reason)
    c = check.p['compile']
    extra = trd_args(c) + ['--torchcompile', check.p['compile_backend']]
    if mode == 'reduce-overhead':
        extra += ['--torchcompile-mode', 'reduce-overhead']
    entry, ranks, text, _ = check.trainpy(f'compile-{mode}', log, timeout, check.setup['compile_folder'],
                                          check.setup['compile_classes'], c, extra,
                                          env={'TORCH_LOGS': 'recompiles,graph_breaks'})
    entry.update(parse_compile(ranks.get(0, []), text))
    entry['backend'], entry['mode'] = check.p['compile_backend'], mode
    return entry


RECOMPILE = re.compile(r'Recompiling function (\S+)')
GUARD = re.compile(r'\[__recompiles\]\s+- (?:\d+/\d+: )(.*)')


def parse_compile(records, log):
    """Graphs built per epoch in training and validation, the sizes trained on, recompiles and the first guard
    that failed for each, graph breaks, compile times."""
    epochs = of_kind(records, 'epoch')
    validates = of_kind(records, 'validate')
    train_graphs = [e['graphs'] for e in epochs]
    val_graphs = [sum(v['graphs'] for v in validates if v.get('epoch') == e['epoch']) for e in epochs]
    trd = [m for m in map(EPOCH_LINE.search, log.splitlines()) if m]
    reduced_sizes = sorted({f'{m[4]}x{m[5]}' for m in trd if int(m[2])})
    distinct = 1 + len(reduced_sizes) if trd else None  # the full size, and the reduced one where served
    reasons, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if RECOMPILE.search(line):
            for following in lines[i + 1:i + 4]:
                if (g := GUARD.search(following)):
                    reasons.append(g[1].strip()[:160])
                    break
    breaks = sum('Graph break' in line and '__graph_breaks' in line for line in log.splitlines())
    ends = of_kind(records, 'end')
    report = ends[-1].get('compile', {}) if ends else {}
    times = report.get('compile_times_s', {})
    seconds = [e['seconds'] for e in epochs]
    return dict(
        train_graphs_per_epoch=train_graphs, val_graphs_per_epoch=val_graphs, train_sizes=distinct,
        reduced_sizes=reduced_sizes, trd_path=sorted({m[6] for m in trd}),
        recompiles=sum(bool(RECOMPILE.search(line)) for line in lines),
        recompile_guards=reasons, graph_breaks=breaks,
        dynamo_compile_s=times.get('_compile.compile_inner'),
        epoch0_minus_epoch1_s=seconds[0] - seconds[1] if len(seconds) > 1 else None,
        train_s_per_epoch=seconds, inductor=report.get('inductor', {}), memory=end_memory(records),
        checks=dict(no_graphs_after_epoch_0=bool(epochs) and sum(train_graphs[1:]) + sum(val_graphs[1:]) == 0,
                    one_graph_per_training_size=bool(epochs) and distinct is not None and train_graphs[0] <= distinct))
