"""What each `log_model` mode leaves in W&B, read back from real offline runs with W&B's alias rules applied
(`OfflineRun.versions`); `fastai-bestmodel log` on a folder written without W&B."""
import json, subprocess, sys, warnings
from pathlib import Path
import pytest, torch, wandb
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric, KeepWeights
from fastai_bestmodel.wandb import WandbCallback
from fastai_bestmodel.offline import read_offline_run
from fastai_bestmodel.checkpoint import list_checkpoints
from conftest import assert_same_weights, python_env

IMPROVES = [0, 3, 7, 12, 16]  # a 20-epoch fit that improves 5 times; the last epoch is not the best
SCORES = [0.2 + 0.1*IMPROVES.index(i) if i in IMPROVES else 0.05 for i in range(20)]


def _run(tmp_path, scores, log_model, later=(), **tracker_kw):
    "Fit in a new offline run, then a second fit for each list of scores in `later`"
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric(scores, 'accuracy'))
    keeps = []
    for values in [scores, *later]:
        learn.metrics[0].values = list(values)
        keep = KeepWeights()
        learn.fit(len(scores), lr=1e-2, cbs=[SaveModelCallback(monitor='accuracy', **tracker_kw), keep,
                                             WandbCallback(log_model=log_model, log_preds=False)])
        keeps.append(keep)
    run.finish()
    logged = read_offline_run(Path(run.dir).parent)
    return learn, keeps, logged, logged.versions(f'run-{run.id}-model')


def _check_each_version_is_its_epochs(versions, weights, rows):
    "Each version's metadata is its epoch's recorded row (and step: 2 batches an epoch) and its weights file holds that epoch's weights"
    for v in versions:
        e = v['metadata']['epoch']
        values = {k: x for k, x in v['metadata'].items() if k != 'provenance'}  # provenance: the .json's, see below
        assert values == {'epoch': e, 'iteration': (e + 1) * 2, **dict(zip(['train_loss', 'valid_loss', 'accuracy'], map(float, rows[e])))}
        staged = next(Path(f['local_path']) for f in v['files'] if f['path'].endswith('.pth'))
        assert_same_weights(torch.load(staged, weights_only=True), weights[e])


@pytest.mark.parametrize('log_model,save_last,epochs', [
    (False, True, []), (True, True, [16]), ('end', False, [16]),
    ('all', False, IMPROVES), ('all', True, IMPROVES + [19]), ('best_and_last', True, [16, 19])])
def test_versions_of_a_20_epoch_fit_that_improves_5_times(tmp_path, log_model, save_last, epochs):
    assert max(range(20), key=lambda i: SCORES[i]) == 16 and sum(SCORES[i] > max(SCORES[:i], default=0) for i in range(20)) == 5
    learn, (keep,), logged, versions = _run(tmp_path, SCORES, log_model, save_last=save_last)
    assert [v['metadata']['epoch'] for v in versions] == epochs
    _check_each_version_is_its_epochs(versions, keep.weights, learn.recorder.values)
    if epochs:
        held = {a: v['metadata']['epoch'] for v in versions for a in v['aliases']}
        assert (held['best'], held['best-accuracy'], held[f'epoch-{epochs[0]}'], held['latest']) == (16, 16, epochs[0], epochs[-1])
        if save_last and log_model in ('all', 'best_and_last'): assert held['last'] == 19
    assert logged.summary['best_epoch'] == 16 and logged.summary['best_accuracy'] == SCORES[16]


def test_all_with_async_saves_uploads_only_written_checkpoints_each_its_own(tmp_path):
    "With `async_save`, a best replaced before the writer finished it is not uploaded; every version uploaded is its epoch's"
    learn, (keep,), logged, versions = _run(tmp_path, SCORES, 'all', async_save=True, save_last=True)
    got = [v['metadata']['epoch'] for v in versions]
    assert set(got) <= set(IMPROVES + [19]) and got[-2:] == [16, 19], got
    _check_each_version_is_its_epochs(versions, keep.weights, learn.recorder.values)


def test_two_fits_in_one_run_number_epochs_over_the_run_and_keep_best_on_the_better(tmp_path):
    "A second fit (a notebook cell run again) whose bests are worse than the first's: `best` stays on the first fit's model"
    scores = [0.5, 0.9, 0.7]
    learn, keeps, logged, versions = _run(tmp_path, scores, 'all', later=[[0.3, 0.6, 0.4]])
    held = {a: v['metadata']['epoch'] for v in versions for a in v['aliases']}
    assert sorted(a for a in held if a.startswith('epoch-')) == ['epoch-0', 'epoch-1', 'epoch-3', 'epoch-4']
    # the second fit's bests (run epochs 3 and 4) are worse than run epoch 1's: `best` stays there
    best = next(v for v in versions if 'best' in v['aliases'])
    assert 'epoch-1' in best['aliases'] and logged.summary['best_epoch'] == 1
    # each version's metadata keep its checkpoint's own epoch; the second fit's also say where they are in the run
    assert [(v['metadata']['epoch'], v['metadata'].get('run_epoch')) for v in versions] == [(0, None), (1, None), (0, 3), (1, 4)]
    assert len({v['digest'] for v in versions}) == len(versions) == 4


def test_log_command_publishes_a_folder_written_without_wandb(tmp_path):
    "A fit without W&B (top 2, last epoch the best, so `model.pth` and `model_last.pth` hold the same weights), logged later"
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7, 0.95], 'accuracy'))
    learn.fit(4, lr=1e-2, cbs=SaveModelCallback(monitor='accuracy', save_top_k=2, save_last=True))
    r = subprocess.run([sys.executable, '-m', 'fastai_bestmodel.cli', 'log', 'models', '--project', 'later', '--mode', 'offline',
                        '--dir', str(tmp_path)], cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '3 checkpoints (2 distinct weights) logged to run' in r.stdout and 'wandb sync' in r.stdout
    logged = read_offline_run(max(tmp_path.glob('wandb/offline-run-*')))
    versions = logged.versions(f'run-{logged.path.stem[4:]}-model')
    assert [(v['metadata']['epoch'], sorted(v['aliases'])) for v in versions] == [
        (1, ['epoch-1']), (3, ['best', 'best-accuracy', 'epoch-3', 'last', 'latest'])]
    # each version's metadata: its .json's (the one logged: `model_last.json` of weights also in `model.pth`), provenance included
    on_disk = {p.stem: {**d['metadata'], 'provenance': d['provenance']} for p, d in list_checkpoints(tmp_path/'models')}
    for v in versions:
        logged_json = next(Path(f['path']).stem for f in v['files'] if f['path'].endswith('.json'))
        assert v['metadata'] == on_disk[logged_json] and v['metadata']['provenance']['model']
    assert logged.summary['best_epoch'] == 3 and logged.summary['best-accuracy']['accuracy'] == 0.95


def test_prune_command_refuses_bad_input_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'fastai_bestmodel.cli', 'prune', 'me/proj/model', '--keep', '-1'],
                       cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=120)
    # a usage error (exit 2, argparse's line) before anything reaches W&B; until 0.1.0 it was W&B's error (exit 1)
    assert (r.returncode, r.stdout) == (2, ''), r.stderr
    assert r.stderr.splitlines()[-1] == "fastai-bestmodel prune: error: argument --keep: must be a whole number >= 0, not '-1'"


@pytest.mark.parametrize('log_model,want', [('end', [(2, ['best', 'best-accuracy', 'epoch-2', 'latest'])]),
                                            ('all', [(0, ['epoch-0']), (2, ['best', 'best-accuracy', 'epoch-2', 'latest'])])])
def test_fine_tune_is_one_training_for_the_uploads(tmp_path, log_model, want):
    "`fine_tune`'s frozen fit does not end the training: 'end' uploads one version, after the unfrozen fit"
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9], 'accuracy'))  # by epoch of each fit
    learn.fine_tune(2, freeze_epochs=1, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=log_model, log_preds=False)])
    run.finish()
    versions = read_offline_run(Path(run.dir).parent).versions(f'run-{run.id}-model')
    assert [(v['metadata']['epoch'], sorted(v['aliases'])) for v in versions] == want


def test_all_with_async_top_k_passes_over_evicted_checkpoints_quietly(tmp_path):
    "A top-k checkpoint evicted (or a best replaced) before its upload is passed over without a warning"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn, (keep,), logged, versions = _run(tmp_path, [0.1, 0.5, 0.3, 0.6, 0.2, 0.7, 0.4, 0.65], 'all', save_top_k=3, async_save=True)
    assert not [w for w in ws if 'could not log' in str(w.message)], [str(w.message) for w in ws]
    _check_each_version_is_its_epochs(versions, keep.weights, learn.recorder.values)
    assert next(v for v in versions if 'best' in v['aliases'])['metadata']['epoch'] == 5


def test_a_trackers_best_alias_is_its_own_not_another_monitors_summary(tmp_path):
    "A run whose first fit was tracked by valid_loss: a later accuracy tracker's best still gets `best-accuracy`"
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.7, 0.2], 'accuracy'))
    learn.fit(2, lr=1e-2, cbs=WandbCallback(log_model=True, log_preds=False))  # adds a tracker of valid_loss
    learn.metrics[0].values = [0.3, 0.5]
    learn.fit(2, lr=1e-2, cbs=[SaveModelCallback(monitor='accuracy', fname='acc'), WandbCallback(log_model=True, log_preds=False)])
    run.finish()
    versions = read_offline_run(Path(run.dir).parent).versions(f'run-{run.id}-acc')
    assert [(v['metadata']['accuracy'], 'best-accuracy' in v['aliases']) for v in versions] == [(0.5, True)]


def test_log_command_names_a_missing_path_and_skips_weights_without_json(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'fastai_bestmodel.cli', 'log', 'nope', '--mode', 'offline'],
                       cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == ("error: nope: no such file or folder; give a checkpoint's .pth, "
                                                              "its .json, or the folder that holds them."), r.stderr
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9], 'accuracy'))
    learn.fit(2, lr=1e-2, cbs=SaveModelCallback(monitor='accuracy', save_last=True))
    learn.save('plain')  # fastai's own save: no .json
    r = subprocess.run([sys.executable, '-m', 'fastai_bestmodel.cli', 'log', 'models', '--mode', 'offline', '--project', 'p', '--dir', str(tmp_path)],
                       cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'plain.pth: no .json beside it' in r.stderr, r.stderr


@pytest.mark.parametrize('entity', [None, 'my-team'])
def test_offline_prune_hint_says_what_entity_to_give(tmp_path, capsys, entity):
    "Offline, the command to run after `wandb sync` names the entity W&B knows (`entity=`, WANDB_ENTITY), or says what to put there"
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path, entity=entity)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9], 'accuracy'))
    learn.fit(2, lr=1e-2, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model='all', log_preds=False, keep_versions=1)])
    run.finish()
    said = capsys.readouterr().out
    assert f'fastai-bestmodel prune {entity or "ENTITY"}/fastai-bestmodel-tests/run-{run.id}-model --keep 1' in said, said
    assert ('ENTITY is your W&B user or team name' in said) == (entity is None), said


def test_aliases_added_later_from_another_folder_reach_the_version_already_logged(tmp_path, monkeypatch):
    from fastai_bestmodel.artifacts import log_checkpoint, logged_versions
    learn = synth_learner(n_trn=2, path='.', metrics=ScriptedMetric([0.5], 'accuracy'))  # fastai's default: a relative path
    monkeypatch.chdir(tmp_path)
    learn.fit(1, cbs=SaveModelCallback(monitor='accuracy'))
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    log_checkpoint('models/model.pth')
    monkeypatch.chdir(tmp_path.parent)  # a later call, from elsewhere, names the file by its full path
    assert log_checkpoint(tmp_path / 'models' / 'model.pth', aliases=['production']) is not None
    assert 'production' in next(iter(logged_versions(run).values())).popitem()[1]['aliases']
    run.finish()


def test_a_second_fit_with_the_tracker_a_wandb_callback_adds_does_not_call_its_own_checkpoint_anothers(tmp_path):
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9], 'accuracy'),
                          cbs=WandbCallback(log_model=True, log_preds=False))  # on the learner, for every fit
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        for _ in range(2): learn.fit(2, lr=1e-2)
    run.finish()
    assert not [w for w in ws if 'did not write' in str(w.message)], [str(w.message) for w in ws]
    assert not any(isinstance(cb, SaveModelCallback) for cb in learn.cbs)  # the tracker it added left with each fit
