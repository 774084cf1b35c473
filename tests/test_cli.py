"`fastai-bestmodel show` in its own process, as a user runs it: what it loads, what it prints, how it exits"
import json, os, sys, subprocess, shutil
from pathlib import Path
import pytest
from torch import nn
from fastai_bestmodel.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# Calls `main` as the console script does, then prints the torch and fastai modules the process loaded
DRIVER = ("import sys; from fastai_bestmodel.cli import main; rc = main(sys.argv[1:]); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastai'))); sys.exit(rc)")


def run_python(*args, cwd):
    "Run this checkout's code in a new Python, with the warnings a user would see"
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def checkpoints(tmp_path):
    "A folder with two checkpoints in `models/` and files that are not checkpoints"
    save_checkpoint(tmp_path/'models/model.pth', nn.Linear(3, 2).state_dict(), dict(epoch=4, accuracy=0.93), monitor='accuracy', comp='greater')
    save_checkpoint(tmp_path/'models/last.pth', nn.Linear(3, 2).state_dict(), dict(epoch=7, accuracy=0.91), monitor='accuracy', comp='greater')
    (tmp_path/'list.json').write_text('[1, 2]')
    (tmp_path/'no_digest.json').write_text('{"format": "fastai_bestmodel.checkpoint/1", "weights": "no_digest.pth", "metadata": {}}')
    (tmp_path/'learn_save.pth').write_bytes(b'no .json beside it')
    return tmp_path


@pytest.mark.parametrize('target', ['models/model.pth', 'models/model.json', 'models', 'nothere', 'list.json', 'no_digest.json', '.'])
def test_show_loads_neither_torch_nor_fastai(checkpoints, target):
    r = run_python('-c', DRIVER, 'show', target, cwd=checkpoints)
    assert r.stdout.splitlines()[-1] == '[]', r.stdout + r.stderr


def test_python_m_cli_show_prints_the_checkpoint_and_no_warning(checkpoints):
    r = run_python('-m', 'fastai_bestmodel.cli', 'show', 'models/model.pth', cwd=checkpoints)
    assert (r.returncode, r.stderr) == (0, '')
    assert r.stdout.splitlines()[-1].startswith('models/model.pth: digest matches (xxh3_128:')


def test_show_folder_lists_each_checkpoint_by_name(checkpoints):
    r = run_python('-m', 'fastai_bestmodel.cli', 'show', 'models', cwd=checkpoints)
    assert (r.returncode, r.stderr) == (0, '')
    assert r.stdout.splitlines() == ['last.pth   epoch 7  accuracy 0.91  digest ok',
                                     'model.pth  epoch 4  accuracy 0.93  digest ok']


@pytest.mark.parametrize('target,code', [('nothere', 2), ('.', 2), ('list.json', 2), ('no_digest.json', 1), ('learn_save.pth', 2)])
def test_bad_input_is_one_error_line_and_exit_2_for_bad_usage_1_for_a_failed_check(checkpoints, target, code):
    r = run_python('-m', 'fastai_bestmodel.cli', 'show', target, cwd=checkpoints)
    assert (r.returncode, r.stdout) == (code, '')
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith('error: '), r.stderr


def test_console_script_fails_a_damaged_checkpoint_in_one_line(checkpoints):
    script = shutil.which('fastai-bestmodel', path=str(Path(sys.executable).parent))
    if script is None: pytest.skip('the fastai-bestmodel console script is not installed')
    (checkpoints/'models/last.pth').write_bytes(b'not the weights')
    r = run_python(script, 'show', 'models', cwd=checkpoints)
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == 'last.pth   epoch 7  accuracy 0.91  digest MISMATCH (weights changed since saved)'
    assert r.stderr == 'error: models: 1 of 2 checkpoints failed their check (last.pth); `fastai-bestmodel show models/last.pth` says why.\n'


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0, reason='needs POSIX permissions that bind (not root)')
def test_unreadable_folder_is_one_error_line(checkpoints):
    folder = checkpoints/'models'
    folder.chmod(0)
    try: r = run_python('-m', 'fastai_bestmodel.cli', 'show', 'models', cwd=checkpoints)
    finally: folder.chmod(0o755)
    assert (r.returncode, r.stdout) == (1, '')
    assert r.stderr == 'error: models: cannot list its files (Permission denied); check its permissions.\n'


def test_ls_loads_neither_torch_nor_fastai_and_its_json_parses(checkpoints):
    r = run_python('-c', DRIVER, 'ls', 'models', '--json', cwd=checkpoints)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    *rows, loaded = r.stdout.splitlines()
    assert loaded == '[]'
    rows = json.loads('\n'.join(rows))
    assert [(x['file'], x['epoch'], x['accuracy'], x['digest']) for x in rows] == [('model.pth', 4, 0.93, 'ok'), ('last.pth', 7, 0.91, 'ok')]


def test_ls_fails_a_changed_checkpoint_with_1_and_a_missing_folder_with_2(checkpoints):
    (checkpoints/'models/last.pth').write_bytes(b'not the weights')
    r = run_python('-m', 'fastai_bestmodel.cli', 'ls', 'models', cwd=checkpoints)
    assert r.returncode == 1 and r.stdout.splitlines()[2].endswith('MISMATCH (weights changed since saved)'), r.stdout
    assert r.stderr.startswith('error: models: 1 of 2 checkpoints failed their check (last.pth)')
    r = run_python('-m', 'fastai_bestmodel.cli', 'ls', 'nothere', cwd=checkpoints)
    assert (r.returncode, r.stdout, r.stderr.count('\n')) == (2, '', 1) and r.stderr.startswith('error: nothere: no such folder')
    r = run_python('-m', 'fastai_bestmodel.cli', 'ls', cwd=checkpoints)  # no folder: argparse's usage error
    assert r.returncode == 2 and 'usage: fastai-bestmodel ls' in r.stderr


def test_ls_into_a_closed_pipe_ends_quietly(checkpoints):
    "`fastai-bestmodel ls models | head -1`: the reader stops early; no traceback, the exit code of a SIGPIPE"
    for i in range(400): shutil.copy(checkpoints/'models/model.json', checkpoints/f'models/copy{i}.json')  # 400 rows, > a pipe's buffer
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    p = subprocess.Popen([sys.executable, '-m', 'fastai_bestmodel.cli', 'ls', 'models', '--json'], cwd=checkpoints, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(100); p.stdout.close()
    err = p.stderr.read().decode(); p.wait(timeout=120)
    assert (p.returncode, err) == (141, ''), err
