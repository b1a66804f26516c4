"""The GPU check's tables, from its result (gpu_check.json's content): the setup line, accuracy (call 1),
multi-process and torch.compile, speed (call 2 and ``--call bench``); written to gpu_check.txt and printed last."""

from .plan import ACC_ARMS, CALL_PHASES, MEMORY_BOUND, SPEED_PHASES


def fmt(value, spec='.0f'):
    if value is None or (isinstance(value, float) and value != value):
        return '-'
    return format(value, spec)


def gib(value):
    return fmt(value / 2 ** 30, '.2f') if value else '-'


def render(head, rows):
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ['| ' + ' | '.join(str(c).ljust(w) for c, w in zip(r, widths)) + ' |' for r in [head, *rows]]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)


def status_cells(phases, name):
    e = phases.get(name, {})
    return e.get('status', 'not run'), fmt(e.get('seconds')) if 'seconds' in e else ''


def setup_line(result):
    env, setup = result.get('environment', {}), result['phases'].get('setup', {})
    parts = [f"torch {env['torch']}" if env.get('torch') else '', f"timm {env['timm']}" if env.get('timm') else '',
             env.get('gpu') or ('no GPU' if env else ''),
             f"{env['cpus']} CPUs, workers {result['workers']}" if env.get('cpus') else '',
             f"{env['jpegs']} photos ({env['jpeg_bytes'] / 2 ** 20:.0f} MiB)" if env.get('jpegs') else '',
             f"Imagenette {env['acc_train']} train / {env['acc_val']} val, {env['acc_classes']} classes"
             if env.get('acc_train') else '', setup.get('reason') or '']
    status, seconds = status_cells(result['phases'], 'setup')
    return f"setup: {status} in {seconds} s; " + ', '.join(filter(None, parts))


def acc_table(result):
    p, phases, comp = result['profile']['acc'], result['phases'], result.get('comparison', {})
    head = ('arm', 'status', 's', 'epochs', f"top-1 (epoch {comp.get('common_epochs', '-')})", 'top-1 best',
            'share at reduced', 'train s/epoch', 'epoch s', 'time ratio (train / epoch)', 'max reserved GiB',
            'max allocated GiB', 'retries', f'reserved vs baseline (bound +{MEMORY_BOUND:.0%})')
    rows = []
    for name in ACC_ARMS:
        e, c = phases.get(name, {}), comp.get('arms', {}).get(name, {})
        mem = e.get('memory', {})
        over = c.get('reserved_over_baseline')
        rows.append((name, *status_cells(phases, name), len(e.get('epochs', [])), fmt(c.get('top1_common'), '.2f'),
                     fmt(e.get('top1_best'), '.2f'), fmt(e.get('reduced_share'), '.3f'),
                     fmt(e.get('train_s_per_epoch'), '.2f'), fmt(e.get('epoch_s_per_epoch'), '.2f'),
                     f"{fmt(c.get('train_time_ratio'), '.3f')} / {fmt(c.get('epoch_time_ratio'), '.3f')}",
                     gib(mem.get('max_reserved')), gib(mem.get('max_allocated')), fmt(mem.get('alloc_retries')),
                     '' if over is None else f"{over:+.1%} " + ('holds' if c.get('memory_bound_holds') else 'EXCEEDS')))
    ideal = 1 - p['prob'] * (1 - (p['trd'] / p['img']) ** 2)
    title = (f"Accuracy ({result['mode']}): {p['model']} from scratch, {p['img']} px (reduced {p['trd']}), "
             f"{p['epochs']} epochs, batch {p['batch']}, P {p['prob']}; ideal compute ratio {ideal:.3f}")
    return title + '\n' + render(head, rows)


def checks_table(result):
    phases = result['phases']
    head = ('phase', 'status', 's', 'checks', 'figures')
    rows = []
    for name in ('ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead'):
        if name not in phases:
            continue
        e = phases[name]
        checks = e.get('checks', {})
        passed = sum(v is True for v in checks.values())
        failed = [k for k, v in checks.items() if v is not True]
        cell = f'{passed}/{len(checks)}' + (f" (failed: {', '.join(failed)})" if failed else '') if checks else '-'
        if name.startswith('ddp'):
            coll = e.get('collectives', {})
            mem = e.get('memory', {}).get(0, {}) or e.get('memory', {}).get('0', {})
            works = ', '.join(k for k, v in coll.items() if v is True)
            fails = ', '.join(k for k, v in coll.items() if v is not True)
            figures = (f"{e.get('backend', '?')} on {e.get('collectives_device', '?')} (asked: "
                       f"{e.get('backend_asked', '?')}); collectives ok: {works}" + (f'; not: {fails}' if fails else '')
                       + (f"; rank 0 max reserved {gib(mem['max_reserved'])} GiB" if mem.get('max_reserved') else ''))
        else:
            mem = e.get('memory', {})
            figures = (f"train graphs per epoch {e.get('train_graphs_per_epoch')}, validation "
                       f"{e.get('val_graphs_per_epoch')} for {e.get('train_sizes')} training sizes; "
                       f"{e.get('recompiles', '-')} recompiles"
                       + (f" ({'; '.join(sorted(set(e['recompile_guards']))[:3])})"
                          if e.get('recompile_guards') else '')
                       + f", {e.get('graph_breaks', '-')} graph breaks; dynamo compile "
                       f"{fmt(e.get('dynamo_compile_s'), '.1f')} s, epoch 0 - epoch 1 "
                       f"{fmt(e.get('epoch0_minus_epoch1_s'), '.1f')} s"
                       + (f"; max reserved {gib(mem.get('max_reserved'))} GiB" if mem.get('max_reserved') else ''))
        figures += f"; {e['reason']}" if e.get('reason') else ''
        rows.append((name, *status_cells(phases, name), cell, figures))
    return f"Multi-process and torch.compile ({result['mode']})\n" + render(head, rows)


def speed_table(result):
    p, phases = result['profile']['speed'], result['phases']
    head = ('phase', 'status', 's', 'config', 'reduced', f"step ms {p['img']} / {p['trd']}", 'time ratio', 'ideal',
            'ratio/ideal', '(paired)', 'data ms/reduced', 'notes')
    rows = []

    def row(phase, config='', reduced='', steps='', ratio='', ideal='', over='', paired='', data='', notes='',
            first=True):
        status, seconds = status_cells(phases, phase) if first else ('', '')
        rows.append((phase if first else '', status, seconds, config, reduced, steps, ratio, ideal, over, paired,
                     data, notes))

    ideal_px = 1 - p['prob'] * (1 - (p['trd'] / p['img']) ** 2)
    base = phases.get('trainpy-baseline', {})
    for name in SPEED_PHASES:
        if name not in result['phases'] and name not in CALL_PHASES[result['call']]:
            continue
        e = phases.get(name, {})
        last, path = e.get('last_epoch', {}), name.split('-')[1]
        ratio = (e['train_s_per_epoch'] / base['train_s_per_epoch']
                 if e.get('train_s_per_epoch') and base.get('train_s_per_epoch') else None)
        notes = []
        if e.get('train_s_per_epoch'):
            notes.append(f"{e['train_s_per_epoch']:.2f} s per epoch after the first")
        if e.get('memory', {}).get('max_reserved'):
            notes.append(f"max reserved {gib(e['memory']['max_reserved'])} GiB, "
                         f"{e['memory'].get('alloc_retries', 0)} retries")
        if e.get('reason'):
            notes.append(e['reason'])
        row(name, config=path, reduced=f"{last['reduced']}/{last['batches']}" if last else '',
            steps=f"{fmt(e.get('step_ms_full'))} / {fmt(e.get('step_ms_reduced'))}" if last else '',
            ratio=fmt(ratio, '.3f') if ratio and path != 'baseline' else '',
            ideal=fmt(ideal_px, '.3f') if last else '',
            over=fmt(ratio / ideal_px, '.3f') if ratio and path != 'baseline' else '',
            paired=fmt(e['ratio_paired'] / ideal_px, '.3f') if e.get('ratio_paired') else '',
            data=fmt(last.get('data_ms_reduced'), '.1f') if last else '', notes='; '.join(notes))
    for kind in ('compute', 'loader'):
        name = f'bench-{kind}'
        if name not in CALL_PHASES[result['call']]:
            continue
        e = phases.get(name, {})
        configs = e.get('configs', {})
        if not configs:
            row(name, notes=e.get('reason') or '')
        for i, (config, c) in enumerate(configs.items()):
            ratio = fmt(c['ratio'], '.3f') + (f" ± {c['ratio_se']:.3f}" if c.get('ratio_se') else '')
            row(name, config=config, reduced=f"{c['reduced']}/{c['steps']}",
                steps=f"{fmt(c['step_ms_full'])} / {fmt(c['step_ms_reduced'])}", ratio=ratio,
                ideal=fmt(c['ideal'], '.3f'), over=fmt(c['ratio_over_ideal'], '.3f'),
                paired=fmt(c['ratio_paired_over_ideal'], '.3f'), data=fmt(c['data_ms_per_reduced'], '.1f'),
                notes=(f"peak MB {fmt(c['peak_mb_full'])} / {fmt(c['peak_mb_reduced'])}"
                       if c.get('peak_mb_full') else ''), first=i == 0)
    if 'bench-compile' in CALL_PHASES[result['call']]:
        e = phases.get('bench-compile', {})
        checks = e.get('compile_check', [])
        if not checks:
            row('bench-compile', notes=e.get('reason') or '')
        for i, c in enumerate(checks):
            kinds = c.get('graph_kinds', {})
            row('bench-compile', config=f"{c['path']}, {c.get('mode', 'dynamo default')}",
                notes=f"{c['graphs']} graphs ({kinds.get('static', '?')} static, {kinds.get('dynamic', '?')} dynamic) "
                      f"for {c['distinct_sizes']} sizes, per epoch "
                      f"{[x['graphs'] for x in c['epochs']]}, {'holds' if c['holds'] else 'DOES NOT HOLD'}",
                first=i == 0)
    title = (f"Speed ({result['mode']}): {p['model']}, {p['img']} vs {p['trd']} px, P {p['prob']}, AMP, channels_last; "
             f"ideal time ratio {ideal_px:.3f}")
    return title + '\n' + render(head, rows)


def tables(result):
    call_phases = set(CALL_PHASES[result['call']])
    parts = [f"TRD GPU check ({result['mode']}), call {result['call']}, {result.get('seconds', 0):.0f} s of "
             f"{result['deadline_s']:.0f}; {setup_line(result)}"]
    if call_phases & set(ACC_ARMS):
        parts.append(acc_table(result))
    if call_phases & {'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead'}:
        parts.append(checks_table(result))
    if call_phases & {*SPEED_PHASES, 'bench-compute', 'bench-loader', 'bench-compile'}:
        parts.append(speed_table(result))
    return '\n\n'.join(parts)
