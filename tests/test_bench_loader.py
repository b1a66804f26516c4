"""experiments/bench_loader.py keeps working: a few generated JPEGs, every part once, no timing assertions."""
import importlib.util
import json
from pathlib import Path

from test_decode import write_folder

BENCH = Path(__file__).resolve().parent.parent / 'experiments' / 'bench_loader.py'


def test_bench_loader_runs_every_part_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('bench_loader', BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = write_folder(tmp_path / 'train', n_per_class=4)
    out = tmp_path / 'bench.json'
    info = bench.main([
        '--data', str(data), '--copy', str(tmp_path / 'copy'), '--copy-workers', '1', '--images', '4',
        '--psnr-images', '4', '--rounds', '1', '--warmup-rounds', '0', '--img-size', '64', '--trd-size', '32',
        '--loader-images', '8', '--loader-rounds', '1', '--loader-workers', '0', '-b', '4',
        '--subsampling-images', '2', '--scratch', str(tmp_path / 'scratch'), '--out', str(out)])
    assert json.loads(out.read_text())['per_worker'].keys() == {'default', 'randaugment'}
    assert set(info['per_worker']['default']) == set(bench.MODES)
    assert set(info['loader']) == {'today', 'fast', 'copy'} and info['copy']['images'] == 8
    assert set(info['workers_per_gpu']) == {'today', 'fast decode', 'reduced copy'}
    text = capsys.readouterr().out
    assert '| mode | ms/img' in text and 'targets:' in text
    assert set(info['subsampling']['psnr']) == {'4:4:4', '4:2:0', '4:2:2', '4:1:1', '4:4:0', 'grey'}
    assert info['subsampling']['shares'] == [dict(subsampling='4:2:0', max_scale=8, images=8, share=1.0)]
