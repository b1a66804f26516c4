"""experiments/bench_trd.py keeps working: two tiny steps per configuration, no timing assertions."""
import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / 'experiments' / 'bench_trd.py'


def load_bench():
    spec = importlib.util.spec_from_file_location('bench_trd', BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_configuration_and_writes_json(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / 'bench.json'
    info = bench.main([
        '--model', 'resnet10t', '--img-size', '32', '--trd-size', '16', '--trd-prob', '0.5', '-b', '2',
        '--steps', '2', '--rounds', '1', '--warmup-rounds', '1', '--workers', '0',
        '--threads', str(torch.get_num_threads()), '--data-cache', str(tmp_path / 'data'), '--out', str(out)])

    assert json.loads(out.read_text())['summary'].keys() == info['summary'].keys()
    summary = info['summary']
    expected = ['baseline', 'p0', 'loader', 'device'] + (['timm'] if bench.timm_has_scheduled_sizes() else [])
    assert list(summary) == expected
    assert summary['baseline']['reduced_batches'] == summary['p0']['reduced_batches'] == 0
    for path in ('loader', 'device'):
        # one timed epoch of 2 batches: exactly round(0.5 x 2) = 1 at 16x16, through the plugin's hooks
        assert summary[path]['reduced_batches'] == 1 and summary[path]['steps'] == 2
        assert summary[path]['sizes']['16x16']['batches'] == 1
        assert summary[path]['ideal'] == 1 - 0.5 * (1 - 0.25)
        assert [f['trd_reduced_batches'] for f in summary[path]['trd_figures']] == [1, 1]
    for s in summary.values():
        assert s['sizes']['32x32']['step_ms'] > 0 and s['ratio'] > 0
    assert {r['config'] for r in info['steps']} == set(expected)
    assert '| config' in capsys.readouterr().out
