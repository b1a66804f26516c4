"""The launcher on first contact: ``--help`` with and without a train.py, and ``--get-train-script`` against a
real HTTP server on 127.0.0.1 (serving tests/mini_train.py where timm's release train.py would be), including
what happens offline, on an HTTP error and on a download that is not a train.py."""
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm

import conftest
from conftest import MINI_TRAIN
from timm_trd.cli import launcher, train_script
from timm_trd.errors import TRDConfigError

VERSION = timm.__version__
TAG = f'v{VERSION}'
SERVER_LIFETIME_S = 120  # the server stops itself after this, whatever happens to the test


def run_launcher(argv, capsys, monkeypatch):
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # the launcher hands train.py its own sys.argv
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    return exit_info.value.code, capsys.readouterr()


def assert_one_line_error(code, captured, *pieces):
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith('timm-trd: error: ')
    for piece in pieces:
        assert piece in lines[0]
    return lines[0]


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    """A folder without train.py, no $TIMM_TRAIN_SCRIPT, an empty cache: a fresh machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TIMM_TRAIN_SCRIPT', raising=False)
    monkeypatch.delenv(train_script.URL_ENV_VAR, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return tmp_path


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server: /ok/<tag>/train.py is mini_train.py, /broken/<tag>/train.py a Python file without
    train_one_epoch, /html/<tag>/train.py a web page; anything else is a 404. Yields (base URL, requested paths)."""
    mini = MINI_TRAIN.read_bytes()
    routes = {
        f'/ok/{TAG}/train.py': mini,
        f'/broken/{TAG}/train.py': mini.replace(b'train_one_epoch', b'one_epoch'),
        f'/html/{TAG}/train.py': b'<!DOCTYPE html><html><body>Sign in to continue</body></html>',
    }
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body if body is not None else b'Not Found')

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
    stopper.daemon = True
    stopper.start()
    monkeypatch.setenv('no_proxy', '127.0.0.1')  # a proxy of the machine must not take the local requests
    monkeypatch.setenv('NO_PROXY', '127.0.0.1')
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}', requests
    finally:
        stopper.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -- --help ---------------------------------------------------------------------------------------

def test_help_without_train_script_prints_the_options_and_where_it_looks(newcomer, capsys, monkeypatch):
    code, captured = run_launcher(['--help'], capsys, monkeypatch)
    assert code == 0 and captured.err == ''
    out = captured.out
    for option in ('--trd-prob', '--trd-size', '--trd-full-res-epochs', '--trd-granularity', '--trd-mode',
                   '--trd-seed', '--train-script', '--get-train-script'):
        assert option in out
    cached = newcomer / 'cache' / 'timm-trd' / f'train-{VERSION}.py'
    order = [out.index(where) for where in ('1. --train-script', '2. $TIMM_TRAIN_SCRIPT', '3. ./train.py', str(cached))]
    assert order == sorted(order)
    assert 'no train.py found' in out and 'timm-trd-train --get-train-script' in out


def test_help_from_the_installed_command_without_train_script(newcomer):
    command = Path(sys.executable).parent / 'timm-trd-train'
    cmd = [str(command)] if command.is_file() else [sys.executable, '-m', 'timm_trd']
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_TRAIN_SCRIPT'}
    result = subprocess.run(cmd + ['--help'], capture_output=True, text=True, timeout=120, cwd=newcomer,
                            env={**env, 'XDG_CACHE_HOME': str(newcomer / 'cache'), 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stderr[-2000:]
    assert '--trd-prob' in result.stdout and '--get-train-script' in result.stdout


def test_help_shows_timm_trd_options_and_where_train_py_was_found_before_train_py_help(newcomer, capsys, monkeypatch):
    code, captured = run_launcher(['--train-script', str(MINI_TRAIN), '--help'], capsys, monkeypatch)
    assert code == 0
    out = captured.out
    launcher_part, train_part = out.split(f'train.py: {MINI_TRAIN} (from --train-script); its own options follow.')
    for option in ('--trd-prob', '--trd-size', '--trd-bn-recal', '--demo', '--get-train-script', '--train-script'):
        assert option in launcher_part
    assert out.splitlines().index(next(line for line in out.splitlines() if '--trd-prob P' in line)) < 15
    assert 'mini train script' in train_part and '--data-dir' in train_part
    assert '--trd-prob' not in train_part and '--train-script PATH' not in train_part  # not twice
    assert "the --trd-* options and --train-script: see timm-trd's options above" in train_part
    assert 'usage: timm-trd-train' in train_part


def test_help_of_timm_train_py_has_the_trd_options_on_the_first_screen(train_script, newcomer):
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_TRAIN_SCRIPT'}
    result = subprocess.run([sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '--help'],
                            capture_output=True, text=True, timeout=300, cwd=newcomer,
                            env={**env, 'COLUMNS': '120', 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.lstrip().startswith('--trd-prob P') for line in lines[:15])
    found = lines.index(f'train.py: {train_script} (from --train-script); its own options follow.')
    assert any('--train-img-sizes' in line for line in lines[found:])  # train.py's own help follows
    assert sum('--trd-prob P' in line for line in lines) == 1


def test_the_tests_find_train_py_as_the_launcher_does(newcomer, monkeypatch):
    with pytest.raises(pytest.skip.Exception, match=re.escape('run `timm-trd-train --get-train-script` once')):
        conftest.train_script_or_skip()
    cached = newcomer / 'cache' / 'timm-trd' / f'train-{VERSION}.py'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(MINI_TRAIN.read_bytes())  # as --get-train-script leaves it
    assert conftest.train_script_or_skip() == cached.resolve()
    (newcomer / 'train.py').write_bytes(MINI_TRAIN.read_bytes())
    assert conftest.train_script_or_skip() == (newcomer / 'train.py').resolve()
    monkeypatch.setenv('TIMM_TRAIN_SCRIPT', str(MINI_TRAIN))
    assert conftest.train_script_or_skip() == MINI_TRAIN
    monkeypatch.setenv('TIMM_TRAIN_SCRIPT', str(newcomer / 'nope.py'))
    with pytest.raises(pytest.fail.Exception, match='TIMM_TRAIN_SCRIPT points to .*nope.py, which is not a file'):
        conftest.train_script_or_skip()


def test_missing_train_script_names_the_download_command(newcomer, capsys, monkeypatch):
    (newcomer / 'cache' / 'timm-trd').mkdir(parents=True)
    (newcomer / 'cache' / 'timm-trd' / 'train-0.9.0.py').write_text('')  # another timm's train.py
    code, captured = run_launcher(['--trd-prob', '0.5'], capsys, monkeypatch)
    assert_one_line_error(code, captured, 'no train.py found', 'timm-trd-train --get-train-script',
                          f'holds train-0.9.0.py, not the train.py of timm {VERSION}')


# -- --get-train-script ---------------------------------------------------------------------------

def test_get_train_script_saves_the_release_file_and_the_launcher_finds_it(newcomer, server, capsys, monkeypatch):
    base, requests = server
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'{base}/ok/')
    launcher.main(['--get-train-script'])
    cached = (newcomer / 'cache' / 'timm-trd' / f'train-{VERSION}.py').resolve()
    out = capsys.readouterr().out
    assert f'saved train.py of timm {VERSION} from {base}/ok/{TAG}/train.py to {cached}' in out
    assert cached.read_bytes() == MINI_TRAIN.read_bytes()
    assert requests == [f'/ok/{TAG}/train.py']
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no partial file left

    launcher.main(['--get-train-script'])  # a second time: kept, not downloaded again
    assert f'already at {cached}' in capsys.readouterr().out and len(requests) == 1

    assert train_script.find_train_script(None) == cached  # the launcher finds it next time ...
    code, captured = run_launcher(['--help'], capsys, monkeypatch)
    assert code == 0 and f'train.py: {cached}' in captured.out and 'mini train script' in captured.out

    (newcomer / 'train.py').write_text('')  # ... after ./train.py
    assert train_script.find_train_script(None) == (newcomer / 'train.py').resolve()
    monkeypatch.setenv('TIMM_TRAIN_SCRIPT', str(MINI_TRAIN))  # ... after $TIMM_TRAIN_SCRIPT
    assert train_script.find_train_script(None) == MINI_TRAIN
    assert train_script.find_train_script(str(cached)) == cached  # ... after --train-script


def test_get_train_script_into_a_folder(newcomer, server, capsys, monkeypatch):
    base, _ = server
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'{base}/ok')
    launcher.main(['--get-train-script', str(newcomer / 'scripts')])
    saved = (newcomer / 'scripts' / f'train-{VERSION}.py').resolve()
    assert saved.read_bytes() == MINI_TRAIN.read_bytes()
    assert f'pass --train-script {saved}' in capsys.readouterr().out
    assert not (newcomer / 'cache').exists()


def test_offline_stops_with_one_line_naming_the_url_and_git_clone(newcomer, server, capsys, monkeypatch):
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'http://127.0.0.1:{port}')
    code, captured = run_launcher(['--get-train-script'], capsys, monkeypatch)
    assert_one_line_error(code, captured, f'could not download http://127.0.0.1:{port}/{TAG}/train.py',
                          f'set TIMM_TRD_TRAIN_SCRIPT_URL to a mirror of ', 'or pass --train-script PATH to a train.py you have', f'git clone --branch {TAG} ')
    assert not (newcomer / 'cache').exists()


def test_http_error_stops_with_one_line(newcomer, server, capsys, monkeypatch):
    base, _ = server
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'{base}/missing')
    code, captured = run_launcher(['--get-train-script'], capsys, monkeypatch)
    assert_one_line_error(code, captured, f'could not download {base}/missing/{TAG}/train.py (HTTP 404',
                          f'git clone --branch {TAG} --depth 1 https://github.com/huggingface/pytorch-image-models')
    assert not (newcomer / 'cache').exists()


@pytest.mark.parametrize('route,lacks', [('broken', 'lacks train_one_epoch'),
                                         ('html', f'lacks {", ".join(train_script.required_seams())}')])
def test_download_without_the_seams_is_not_saved(newcomer, server, capsys, monkeypatch, route, lacks):
    base, _ = server
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'{base}/{route}')
    code, captured = run_launcher(['--get-train-script'], capsys, monkeypatch)
    assert_one_line_error(code, captured, 'is not a train.py timm-trd can attach to', lacks, 'nothing saved')
    assert not (newcomer / 'cache' / 'timm-trd' / f'train-{VERSION}.py').exists()


def test_seams_are_found_without_running_the_file():
    source = MINI_TRAIN.read_text() + '\nraise SystemExit("must not run")\n'
    assert train_script.missing_seams(source) == []
    assert {'parser', '_parse_args', 'create_loader', 'train_one_epoch', 'main'} <= set(train_script.required_seams())
    assert set(train_script.required_seams()) <= train_script.module_level_names(source)


def test_a_development_timm_has_no_tag_and_points_to_the_main_branch(newcomer):
    assert train_script.release_tag('1.0.31') == 'v1.0.31'
    assert train_script.release_tag('1.0.29.dev0') is None
    with pytest.raises(TRDConfigError, match=r'timm 1\.0\.29\.dev0 is a development version .* main branch'):
        train_script.fetch_train_script(version='1.0.29.dev0')


def test_get_train_script_takes_one_folder_only(newcomer, capsys, monkeypatch):
    code, captured = run_launcher(['--get-train-script', 'a', 'b'], capsys, monkeypatch)
    assert_one_line_error(code, captured, '--get-train-script takes at most one folder')
    code, captured = run_launcher(['--data-dir', 'x', '--get-train-script'], capsys, monkeypatch)
    assert_one_line_error(code, captured, 'is a command of its own')
