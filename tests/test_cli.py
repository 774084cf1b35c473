"`fastai-bestmodel show` in its own process, as a user runs it: what it loads, what it prints, how it exits"
import json, os, re, sys, subprocess, shutil
from pathlib import Path
import pytest
from torch import nn
from fastai_bestmodel.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# Calls `main` as the console script does, then prints the torch and fastai modules the process loaded
DRIVER = ("import sys; from fastai_bestmodel.cli import main; rc = main(sys.argv[1:]); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastai'))); sys.exit(rc)")


def run_python(*args, cwd, env=None, timeout=120):
    "Run this checkout's code in a new Python, with the warnings a user would see; `env`'s values set, its Nones unset"
    full = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    full['PYTHONPATH'] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    for k, v in (env or {}).items():
        if v is None: full.pop(k, None)
        else: full[k] = v
    # stdin not a terminal: W&B, finding no key, would otherwise ask for one and wait
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


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
    kb = (checkpoints/'models/model.pth').stat().st_size / 1000  # torch's zip of a Linear(3, 2): over 1 kB
    assert r.stdout.splitlines()[0] == f'models/model.pth: best by accuracy, epoch 4: accuracy 0.93; {kb:.1f} kB; digest ok'


def test_show_folder_prints_the_table_of_ls(checkpoints):
    r = run_python('-m', 'fastai_bestmodel.cli', 'show', 'models', cwd=checkpoints)
    assert (r.returncode, r.stderr) == (0, '')
    kb = [f"{(checkpoints/'models'/f).stat().st_size / 1000:.1f}" for f in ('model.pth', 'last.pth')]
    assert [line.split() for line in r.stdout.splitlines()] == [['file', 'reason', 'epoch', 'accuracy', 'size', 'digest'],
                                                               ['model.pth', 'best', '4', '0.93', kb[0], 'kB', 'ok'],
                                                               ['last.pth', 'best', '7', '0.91', kb[1], 'kB', 'ok']]
    assert r.stdout == run_python('-m', 'fastai_bestmodel.cli', 'ls', 'models', cwd=checkpoints).stdout


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
    assert r.stdout.splitlines()[2].split()[::6] == ['last.pth', 'MISMATCH']
    assert r.stdout.splitlines()[-1] == 'last.pth: digest MISMATCH (weights changed since saved)'
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
    assert r.returncode == 1 and r.stdout.splitlines()[2].endswith('  MISMATCH'), r.stdout
    assert r.stdout.splitlines()[-1] == 'last.pth: digest MISMATCH (weights changed since saved)'
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


def test_show_a_file_that_torch_saved_says_it_is_not_a_checkpoint_of_ours(checkpoints):
    "`other.pt`, which `torch.save` wrote: no `.json` beside it, and no `other.pt.json` to go looking for"
    import torch
    torch.save(nn.Linear(3, 2).state_dict(), checkpoints/'other.pt')
    r = run_python('-m', 'fastai_bestmodel.cli', 'show', 'other.pt', cwd=checkpoints)
    assert (r.returncode, r.stdout) == (2, '')
    assert r.stderr == ("error: other.pt: not a checkpoint of fastai_bestmodel: no .json beside it describes it "
                        "(torch.save and learn.save write none); give a .pth that SaveModelCallback saved, its .json, "
                        "or the folder that holds them.\n")


EPOCHS, LR = 'a whole number >= 1', 'a number > 0, such as 0.03'


@pytest.mark.parametrize('option,value,why', [('--epochs', '0', EPOCHS), ('--epochs', '-3', EPOCHS),
                                              ('--lr', '0', LR), ('--lr', 'nan', LR)])
def test_demo_refuses_fewer_than_1_epoch_and_a_learning_rate_not_above_0(tmp_path, option, value, why):
    r = run_python('-m', 'fastai_bestmodel.cli', 'demo', option, value, '--path', str(tmp_path/'demo'),
                   cwd=tmp_path, timeout=300)
    assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
    want = f"fastai-bestmodel demo: error: argument {option}: must be {why}, not '{value}'"
    assert r.stderr.splitlines()[-1] == want, r.stderr
    assert not (tmp_path/'demo').exists()  # refused before anything was trained or written


def test_log_online_without_an_api_key_is_one_error_line(checkpoints, tmp_path_factory):
    "No key where W&B looks (WANDB_API_KEY, ~/.netrc, its settings): one line on how to log in or log offline, no wait"
    home = tmp_path_factory.mktemp('home')  # an empty HOME: no ~/.netrc, no ~/.config/wandb
    env = {k: None for k in os.environ if k.startswith('WANDB_') or k in ('NETRC', 'XDG_CONFIG_HOME')}
    # W&B's server a closed port on loopback: had W&B tried to reach it, nothing would leave this machine, nor wait
    env.update(HOME=str(home), WANDB_MODE='online', WANDB_BASE_URL='http://127.0.0.1:9', WANDB_DIR=str(home))
    r = run_python('-m', 'fastai_bestmodel.cli', 'log', 'models', '--mode', 'online', '--project', 'p',
                   cwd=checkpoints, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (1, ''), r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith('error: models: '), r.stderr
    assert 'No API key' in r.stderr and '`wandb login`' in r.stderr and '`--mode offline`' in r.stderr, r.stderr


# `main` in a program that keeps its own warning filters: it must hand them back as they were
QUIET_DRIVER = ("import sys, warnings; from fastai_bestmodel.cli import main; before = list(warnings.filters); "
                "rc = main(sys.argv[1:]); assert warnings.filters == before, 'main changed the warning filters'; "
                "sys.exit(rc)")


def test_log_prints_none_of_the_libraries_deprecation_warnings(checkpoints):
    "With warnings on (`-W default`), importing fastai warns of pandas' deprecations: not the user's to act on"
    r = run_python('-W', 'default', '-c', QUIET_DRIVER, 'log', 'models', '--mode', 'offline', '--project', 'p',
                   '--dir', str(checkpoints), cwd=checkpoints, timeout=300)
    assert r.returncode == 0 and 'logged to run' in r.stdout, r.stdout + r.stderr
    assert r.stderr == ''


def _word_starts(line:str)->list:
    "Where each word of `line` begins"
    return [i for i, c in enumerate(line) if c != ' ' and (i == 0 or line[i-1] == ' ')]


def test_demo_prints_a_table_of_its_epochs_and_no_warning(tmp_path):
    "A row for each epoch under fastai's metric names, not the recorder's raw lists; then the lines the README shows"
    r = run_python('-m', 'fastai_bestmodel.cli', 'demo', '--epochs', '2', '--path', str(tmp_path/'demo'), cwd=tmp_path,
                   env=dict(WANDB_SILENT=None, WANDB_MODE=None, COLUMNS='80'), timeout=300)
    assert (r.returncode, r.stderr) == (0, ''), r.stderr
    # 80 columns, but for a path, which no line breaks
    assert all(len(line) <= 80 or str(tmp_path) in line for line in r.stdout.splitlines()), r.stdout
    table, tail = r.stdout.replace('\n    ', ' ').split('\n\n')  # each line unfolded
    header, *rows = table.splitlines()
    assert header.split() == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time'], r.stdout
    assert [row.split()[0] for row in rows] == ['0', '1'], r.stdout
    for row in rows: assert _word_starts(row) == _word_starts(header), (header, row)
    last_line = next(line for line in tail.splitlines() if line.startswith('last epoch: '))
    last = dict(kv.split(' ') for kv in last_line.removeprefix('last epoch: ').split(', '))
    for name, value in zip(header.split()[1:4], rows[-1].split()[1:4]):
        # the table's 4 significant digits, the line's 4 decimals
        assert abs(float(value) - float(last[name])) <= 1e-4 + 5e-4 * abs(float(last[name])), (name, value, last)
    prefixes = ['best epoch: epoch ', 'last epoch: epoch 1, ', 'checkpoint: ', 'described by: ', "W&B artifact 'run-",
                '  trained with: fastai ', 'W&B summary: ', 'W&B offline run: ', 'upload it with: wandb sync ']
    lines = tail.splitlines()
    assert len(lines) == len(prefixes) and all(l.startswith(p) for l, p in zip(lines, prefixes)), r.stdout


@pytest.fixture(scope='module')
def fit_folder(tmp_path_factory):
    "The models folder of a tiny fit with four metrics, its three best epochs kept by `save_top_k=3`"
    path = tmp_path_factory.mktemp('fit')
    fit = ("import sys, warnings; warnings.simplefilter('ignore'); from fastai.test_utils import synth_learner; "
           "from fastai.metrics import mae, rmse, mse, R2Score; from fastai_bestmodel.tracker import SaveModelCallback; "
           "learn = synth_learner(n_trn=10, n_val=4, metrics=[mae, rmse, mse, R2Score()], path=sys.argv[1]); "
           "learn.fit(6, 1e-2, cbs=SaveModelCallback(monitor='mae', save_top_k=3))")
    r = run_python('-c', fit, str(path), cwd=path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list((path/'models').glob('*.pth'))) == 3
    return path/'models'


def cli(*args, cwd, env=None):
    "`fastai-bestmodel ARGS` in `cwd`, its stdout not a terminal, at 80 columns"
    return run_python('-m', 'fastai_bestmodel.cli', *args, cwd=cwd, env={'COLUMNS': '80', 'NO_COLOR': None, **(env or {})})


def test_ls_of_three_checkpoints_with_four_metrics_fits_80_columns(fit_folder):
    r = cli('ls', 'models', cwd=fit_folder.parent)
    assert (r.returncode, r.stderr) == (0, ''), r.stderr
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 80, r.stdout
    header = lines[0].split()
    assert header[:4] == ['file', 'reason', 'epoch', 'mae'] and header[-1] == 'digest', r.stdout
    assert not {'monitored', 'iteration', 'values_of_epoch'} & set(header), r.stdout
    assert sorted(line.split()[0] for line in lines[1:4]) == sorted(p.name for p in fit_folder.glob('*.pth'))
    assert lines[4].startswith('not shown: ') and lines[4].endswith('; --wide shows all'), r.stdout
    # what is not shown is what --wide shows
    wide = cli('ls', 'models', '--wide', cwd=fit_folder.parent).stdout.splitlines()[0].split()
    assert set(wide) == set(header) | set(lines[4].removeprefix('not shown: ').split(';')[0].split(', ')) | {
        'monitor', 'iteration'}, (wide, header, lines[4])
    assert {'mae', '_rmse', 'mse', 'r2_score'} <= set(wide)


def test_ls_columns_prints_those_named_in_their_order(fit_folder):
    r = cli('ls', 'models', '--columns', 'r2_score,file', cwd=fit_folder.parent)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ['r2_score', 'file'], r.stdout + r.stderr
    r = cli('ls', 'models', '--columns', 'file,accuracy', cwd=fit_folder.parent)
    assert (r.returncode, r.stdout) == (2, '') and r.stderr.startswith("error: --columns: no column 'accuracy' here")


def test_show_a_checkpoint_says_what_it_holds_in_80_columns(fit_folder):
    best = json.loads((fit_folder/'model.json').read_text())
    r = cli('show', 'models/model.pth', cwd=fit_folder.parent)
    assert (r.returncode, r.stderr) == (0, ''), r.stderr
    assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    summary = r.stdout.replace('\n    ', ' ').splitlines()[0]  # the first line, unfolded
    epoch, mae = best['metadata']['epoch'], best['metadata']['mae']
    assert summary.startswith(f'models/model.pth: best by mae, epoch {epoch}: mae {mae:.4g}, train_loss '), summary
    assert summary.endswith('; digest ok'), summary


def test_show_json_is_the_description_on_disk(fit_folder):
    r = cli('show', 'models/model.pth', '--json', cwd=fit_folder.parent)
    assert (r.returncode, r.stderr) == (0, ''), r.stderr
    assert json.loads(r.stdout) == json.loads((fit_folder/'model.json').read_text())
    r = cli('show', 'models', '--json', cwd=fit_folder.parent)
    assert json.loads(r.stdout) == json.loads(cli('ls', 'models', '--json', cwd=fit_folder.parent).stdout)


def test_ls_of_a_run_folder_suggests_ls_models(fit_folder):
    r = cli('ls', '.', cwd=fit_folder.parent)
    assert (r.returncode, r.stdout) == (2, '') and r.stderr.rstrip().endswith('try `fastai-bestmodel ls models`.')


def test_version(tmp_path):
    r = cli('--version', cwd=tmp_path)
    version = re.search(r'^__version__ = "(.+)"$', (ROOT/'fastai_bestmodel/__init__.py').read_text(), re.M)[1]
    assert (r.returncode, r.stdout, r.stderr) == (0, f'fastai-bestmodel {version}\n', '')


@pytest.fixture
def mismatch(fit_folder, tmp_path):
    "A copy of the fit's models folder whose best weights were overwritten"
    shutil.copytree(fit_folder, tmp_path/'models')
    (tmp_path/'models/model.pth').write_bytes(b'not the weights')
    return tmp_path


RED = '\x1b[1;31m'


def test_mismatch_is_red_only_in_a_terminal_without_no_color(mismatch):
    r = cli('ls', 'models', cwd=mismatch)  # a pipe
    assert r.returncode == 1 and 'MISMATCH' in r.stdout and '\x1b[' not in r.stdout, r.stdout
    if os.name != 'posix': pytest.skip('a pseudo-terminal needs POSIX')
    import pty
    for no_color, coloured in ((None, True), ('1', False)):
        leader, follower = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != 'NO_COLOR'}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]), COLUMNS='80',
                   **({'NO_COLOR': no_color} if no_color else {}))
        p = subprocess.run([sys.executable, '-m', 'fastai_bestmodel.cli', 'ls', 'models'], cwd=mismatch, env=env,
                           stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, timeout=120)
        os.close(follower)
        out = b''
        while True:
            try: chunk = os.read(leader, 65536)
            except OSError: break  # Linux: the terminal closed
            if not chunk: break
            out += chunk
        os.close(leader)
        assert p.returncode == 1
        assert (f'{RED}MISMATCH' in out.decode()) == coloured, (no_color, out)
