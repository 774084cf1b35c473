"""A restarted run never silently replaces a better model: each run here is its own process, as a restarted job is."""
import json, subprocess, sys, torch
from pathlib import Path
from fastai_bestmodel.checkpoint import list_checkpoints, load_checkpoint
from conftest import python_env

HERE = Path(__file__).parent


def _run(folder, **opts):
    out = subprocess.run([sys.executable, str(HERE / 'resume_child.py'), str(folder), json.dumps(opts)],
                         capture_output=True, text=True, env=python_env(), timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _on_disk(folder):
    "{file name: the run * 100 + epoch its weights hold}, each loaded with its digest checked"
    return {p.with_suffix('.pth').name: load_checkpoint(p)[0]['a'].item() for p, _ in list_checkpoints(folder / 'models')}


def test_a_resumed_run_keeps_the_earlier_best_unless_it_beats_it(tmp_path):
    first = _run(tmp_path, run=1, scores=[0.5, 0.9, 0.8], save_top_k=2, filename='{epoch}-{accuracy:.2f}')
    assert first['kept'] == {'model.pth': 0.9, 'epoch=2-accuracy=0.80.pth': 0.8}
    before = (tmp_path / 'models' / 'model.pth').read_bytes()
    second = _run(tmp_path, run=2, scores=[0.6, 0.85, 0.7], save_top_k=2, filename='{epoch}-{accuracy:.2f}', resume=True)
    assert (tmp_path / 'models' / 'model.pth').read_bytes() == before  # 0.85 < 0.9: the first run's best stays
    # 0.85 pushed the first run's 0.8 out; the second run goes on counting the training's epochs: 3, 4, 5
    assert second['kept'] == {'model.pth': 0.9, 'epoch=4-accuracy=0.85.pth': 0.85}
    assert _on_disk(tmp_path) == {'model.pth': 101.0, 'epoch=4-accuracy=0.85.pth': 201.0}
    assert (second['best'], second['best_epoch'], second['holds']) == (0.9, 1, 101.0)  # the learner holds the best of both runs
    assert not second['warnings']


def test_a_new_run_says_it_will_replace_an_earlier_best_and_does(tmp_path):
    _run(tmp_path, run=1, scores=[0.5, 0.9])
    second = _run(tmp_path, run=2, scores=[0.6, 0.7])
    (w,) = [w for w in second['warnings'] if 'did not write' in w]
    assert 'model.pth' in w and 'accuracy 0.9' in w and 'resume=True' in w
    assert _on_disk(tmp_path) == {'model.pth': 201.0}  # fastai's meaning: the new run's best replaces it


REPLACED = """
import sys, warnings
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
warnings.simplefilter('ignore', FutureWarning)  # torch's, about `torch.jit.script`
synth_learner(n_trn=2, path=sys.argv[1]).fit(1, cbs=SaveModelCallback())
learn = synth_learner(n_trn=2, path=sys.argv[1])
learn.fit(1, cbs=SaveModelCallback())  # the user's line
"""


def test_the_replaced_warning_names_the_users_fit_and_comes_before_the_progress_bar(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(REPLACED)
    p = subprocess.run([sys.executable, '-u', str(script), str(tmp_path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=python_env(), timeout=300)
    lines = p.stdout.splitlines()
    (i,) = [i for i, l in enumerate(lines) if 'did not write' in l]
    # starts its own line (not glued to the bar's), names the script's line 8 and shows it, and no bar came before it
    assert lines[i].startswith(f'{script}:8: UserWarning: SaveModelCallback: models/model.pth holds'), lines[i]
    assert lines[i + 1].strip() == 'learn.fit(1, cbs=SaveModelCallback())  # the user\'s line'
    header = max(j for j, l in enumerate(lines[:i]) if l.startswith('epoch') and 'train_loss' in l)  # the second fit's
    assert 'Epoch 1/1' not in '\n'.join(lines[header:i])


def _child(*args):
    child = subprocess.Popen([sys.executable, str(HERE / 'exact_resume_child.py'), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    child.stdout, child.stderr = child.communicate(timeout=300)
    _wait_for_wandb_service(child.pid)
    return child


def _wait_for_wandb_service(pid, timeout=60):
    "Wait until the W&B service of the (killed) process `pid` has gone: until then it holds the run's id"
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for proc in Path('/proc').glob('[0-9]*'):
            try: alive = alive or f'--pid\0{pid}\0' in (proc / 'cmdline').read_text()
            except OSError: pass
        if not alive: return
        time.sleep(0.2)


def test_a_run_killed_after_epoch_2_and_resumed_in_a_new_process_matches_the_uninterrupted_run(tmp_path):
    assert _child(tmp_path / 'full', 'full', tmp_path / 'full.json').returncode == 0
    killed = _child(tmp_path / 'run', 'killed', tmp_path / 'killed.json')
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: nothing ran after epoch 2's saves
    resumed = _child(tmp_path / 'run', 'resumed', tmp_path / 'resumed.json')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, res = json.loads((tmp_path / 'full.json').read_text()), json.loads((tmp_path / 'resumed.json').read_text())
    assert res['start'] == 3 and sorted(map(int, res['rows'])) == [3, 4, 5]
    diff = max(abs(a - b) for e in res['rows'] for a, b in zip(full['rows'][e], res['rows'][e]))
    print(f'\nresumed epochs 3-5 vs the uninterrupted run: largest difference {diff:.3g}')
    assert diff <= 1e-6
    # The final best checkpoint is the uninterrupted run's: same epoch, same metrics, same weights
    a, b = (load_checkpoint(tmp_path / d / 'models' / 'model.pth') for d in ('full', 'run'))
    assert a[1]['metadata'] == b[1]['metadata'] and res['best_epoch'] == full['best_epoch']
    for k in a[0]['model']: assert torch.allclose(a[0]['model'][k], b[0]['model'][k], atol=1e-6), k
    assert res['best'] == full['best']  # and the learner ends holding it
    # fastai's own loader still reads the file, optimizer state and all
    from fastai.test_utils import synth_learner
    learn = synth_learner(n_trn=5, path=tmp_path / 'run')
    learn.load('model_last', with_opt=True)



def test_a_resumed_w_and_b_run_logs_the_uninterrupted_runs_best(tmp_path):
    from fastai_bestmodel.offline import read_offline_run
    assert _child(tmp_path / 'full', 'full', tmp_path / 'full.json', 'fullrun').returncode == 0
    assert _child(tmp_path / 'run', 'killed', tmp_path / 'killed.json', 'killedrun').returncode == -9
    resumed = _child(tmp_path / 'run', 'resumed', tmp_path / 'resumed.json', 'killedrun')  # `wandb.init(id=..., resume='allow')`
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    def logged(folder):  # the last offline run in `folder`: the resumed process's
        return read_offline_run(sorted((folder / 'wandb').glob('offline-run-*'))[-1])
    full, res = logged(tmp_path / 'full'), logged(tmp_path / 'run')
    best = {k: v for k, v in full.summary.items() if k.startswith('best')}
    assert best and {k: res.summary.get(k) for k in best} == best  # best_*, best_epoch and best-valid_loss: the uninterrupted run's
    desc = load_checkpoint(tmp_path / 'run' / 'models' / 'model.pth')[1]
    assert res.summary['best_epoch'] == desc['metadata']['epoch'] and res.summary['best_valid_loss'] == desc['metadata']['valid_loss']


def test_taking_up_what_a_killed_top_k_replacement_left_trims_it_back_to_k(tmp_path):
    "A run killed after moving its old best aside, before the new best replaced it, leaves the old best under two names"
    from fastai_bestmodel.checkpoint import save_checkpoint, link_checkpoint
    from fastai_bestmodel.tracker import SaveModelCallback
    from fastai_bestmodel.test_utils import ScriptedMetric
    from fastai.test_utils import synth_learner
    models = tmp_path / 'models'
    kw = dict(monitor='accuracy', comp='greater', tracker='model')
    save_checkpoint(models / 'model-epoch=0.pth', {'a': torch.zeros(1), 'b': torch.zeros(1)}, {'epoch': 0, 'accuracy': 0.5}, reason='top_k', **kw)
    save_checkpoint(models / 'model.pth', {'a': torch.ones(1), 'b': torch.ones(1)}, {'epoch': 1, 'accuracy': 0.6}, reason='best', **kw)
    link_checkpoint(models / 'model.pth', models / 'model-epoch=1.pth', reason='top_k')  # killed here
    learn = synth_learner(n_trn=1, path=tmp_path, metrics=ScriptedMetric([0.1], 'accuracy'))
    cb = SaveModelCallback(monitor='accuracy', save_top_k=2, filename='model-{epoch}', resume=True)
    learn.fit(1, cbs=cb)
    assert {p.name: v for p, v in cb.best_k_models.items()} == {'model.pth': 0.6, 'model-epoch=0.pth': 0.5}
    assert _on_disk(tmp_path) == {'model.pth': 1.0, 'model-epoch=0.pth': 0.0}  # the duplicate is gone; 0.1 did not enter


def test_resume_true_keeps_its_own_earlier_best_after_load_learner(tmp_path):
    from fastai.learner import load_learner
    from fastai_bestmodel.tracker import SaveModelCallback
    from fastai_bestmodel.test_utils import ScriptedMetric, digits_learner
    learn = digits_learner(path=tmp_path)
    learn.metrics = ScriptedMetric([0.9, 0.5], 'accuracy')
    learn.add_cb(SaveModelCallback(monitor='accuracy', resume=True))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    before = (tmp_path / 'models' / 'model.pth').read_bytes()
    learn.export('export.pkl')
    again = load_learner(tmp_path / 'export.pkl')
    again.metrics = ScriptedMetric([0.4], 'accuracy')
    with again.no_bar(), again.no_logging(): again.fit(1, 1e-3)
    assert (tmp_path / 'models' / 'model.pth').read_bytes() == before  # 0.4 < 0.9: kept
