"""End to end with real W&B in offline mode: what the run's `.wandb` log records is the best epoch's own."""
import base64, hashlib, warnings
from pathlib import Path
import pytest, torch, wandb
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from fastai_bestmodel.wandb import WandbCallback
from fastai_bestmodel.offline import read_offline_run
from fastai_bestmodel.checkpoint import read_checkpoint
from conftest import KeepWeights, assert_same_weights


def _fit(tmp_path, values, name, monitor, epochs, **wandb_kw):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric(values, name))
    keep = KeepWeights()
    learn.fit(epochs, lr=1e-1, cbs=[SaveModelCallback(monitor=monitor), WandbCallback(log_preds=False, **wandb_kw), keep])
    return learn, keep


def _logged(run):
    run.finish()
    return read_offline_run(Path(run.dir).parent)


def _md5_b64(b): return base64.b64encode(hashlib.md5(b).digest()).decode()


@pytest.mark.parametrize('values,name,best', [
    ([0.30, 0.55, 0.93, 0.80, 0.71], 'accuracy', 2),        # higher is better; the last epoch scores 0.71
    ([0.90, 0.40, 0.15, 0.35, 0.60], 'scripted_loss', 2),   # lower is better, inferred from the name
])
def test_artifact_metadata_is_the_best_epochs_own(tmp_path, offline_run, values, name, best):
    learn, keep = _fit(tmp_path, values, name, name, len(values), log_model=True)
    rec = learn.recorder.values
    logged = _logged(offline_run)
    models = [a for a in logged.artifacts if a['type'] == 'model']
    assert len(models) == 1
    art = models[0]
    # The recorder's row for the best epoch, read directly, as numbers
    want = {'epoch': best, 'iteration': (best + 1) * len(learn.dls.train), 'train_loss': float(rec[best][0]), 'valid_loss': float(rec[best][1]), name: values[best]}
    # with what a reader needs to trust the model under one key, the .json's own (a listed change of 0.1.0)
    desc = read_checkpoint(tmp_path / 'models' / 'model.pth')
    assert desc['provenance']['model'] and desc['provenance']['versions']['fastai']
    assert art['metadata'] == {**want, 'provenance': desc['provenance']}
    assert all(isinstance(v, (int, float)) for k, v in art['metadata'].items() if k != 'provenance')
    assert set(art['aliases']) == {'best', f'best-{name}', f'epoch-{best}', 'latest'}
    # The summary carries the best model's values, not the last epoch's nor the lowest seen
    for k, v in want.items():
        if k not in ('epoch', 'iteration'): assert logged.summary[f'best_{k}'] == v
    assert logged.summary['best_epoch'] == best
    # The artifact's file is the checkpoint on disk, and that holds the best epoch's weights
    files = {f['path']: f for f in art['files']}
    assert set(files) == {'model.pth', 'model.json'}
    pth = tmp_path / 'models' / 'model.pth'
    assert files['model.pth']['digest'] == _md5_b64(pth.read_bytes())
    assert_same_weights(torch.load(pth, weights_only=True), keep.weights[best])
    staged = Path(files['model.pth']['local_path'])
    if staged.exists(): assert_same_weights(torch.load(staged, weights_only=True), keep.weights[best])
    # and the weights of the best epoch differ from the last epoch's, so the check above could fail
    assert not torch.equal(keep.weights[best]['a'], keep.weights[-1]['a'])
    # The .json beside the weights says the same
    desc = read_checkpoint(pth)
    assert desc['metadata'] == want and desc['monitor'] == name
    assert files['model.json']['digest'] == _md5_b64((tmp_path / 'models' / 'model.json').read_bytes())


def test_fastais_own_pair_logs_the_last_epoch_as_strings(tmp_path, offline_run):
    "The bug this package fixes, measured with fastai's callbacks (and our fix of its config crash)"
    import fastai_bestmodel.wandb  # noqa: F401  (fixes fastai's before_fit crash on fastcore 2.2)
    from fastai.callback.tracker import SaveModelCallback as FastaiSave
    from fastai.callback.wandb import WandbCallback as FastaiWandb
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.3], 'accuracy'))
    learn.fit(3, lr=1e-1, cbs=[FastaiSave(monitor='accuracy'), FastaiWandb(log_model=True, log_preds=False)])
    art = [a for a in _logged(offline_run).artifacts if a['type'] == 'model'][0]
    assert art['metadata']['accuracy'] == '0.3'  # the last epoch's, as a string, beside the best epoch's weights


def test_load_best_false_keeps_the_last_epochs_weights(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.3], 'accuracy'))
    keep = KeepWeights()
    learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy', load_best=False), WandbCallback(log_model=True, log_preds=False), keep])
    assert_same_weights(learn.model.state_dict(), keep.weights[2])
    assert_same_weights(torch.load(tmp_path / 'models' / 'model.pth', weights_only=True), keep.weights[1])
    art = [a for a in _logged(offline_run).artifacts if a['type'] == 'model'][0]
    assert art['metadata']['epoch'] == 1


def test_log_model_false_uploads_nothing_but_writes_the_summary(tmp_path, offline_run):
    _fit(tmp_path, [0.5, 0.9, 0.3], 'accuracy', 'accuracy', 3, log_model=False)
    logged = _logged(offline_run)
    assert [a for a in logged.artifacts if a['type'] == 'model'] == []
    assert logged.summary['best_accuracy'] == 0.9 and logged.summary['best_epoch'] == 1


def test_unchanged_weights_are_not_uploaded_again(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.9], 'accuracy'))
    tracker = SaveModelCallback(monitor='accuracy', reset_on_fit=False)
    cbs = [tracker, WandbCallback(log_model=True, log_preds=False)]
    learn.fit(1, lr=1e-1, cbs=cbs)
    learn.metrics[0].values = [0.5]  # the second fit finds nothing better: the checkpoint is the same
    learn.fit(1, lr=1e-1, cbs=cbs)
    models = [a for a in _logged(offline_run).artifacts if a['type'] == 'model']
    assert len(models) == 1
    assert models[0]['metadata']['accuracy'] == 0.9


def test_a_failed_upload_keeps_the_checkpoint_and_ends_the_fit(tmp_path, offline_run, monkeypatch):
    """The W&B server cannot fail here on demand: a test double stands in for it, raising from `log_artifact`
    as the client does when the network, the server or the quota fails."""
    def fail(*args, **kwargs): raise ConnectionError('W&B server unreachable (test double)')
    monkeypatch.setattr(offline_run, 'log_artifact', fail)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn, keep = _fit(tmp_path, [0.5, 0.9, 0.3], 'accuracy', 'accuracy', 3, log_model=True)
    msg = next(str(w.message) for w in ws if 'could not log the model' in str(w.message))
    assert 'W&B server unreachable' in msg and 'fastai-bestmodel log ' in msg and str(tmp_path / 'models' / 'model.pth') in msg
    assert_same_weights(torch.load(tmp_path / 'models' / 'model.pth', weights_only=True), keep.weights[1])
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 1
    monkeypatch.undo()
    logged = _logged(offline_run)
    assert logged.summary['best_epoch'] == 1  # the summary was still written


def test_wandb_callback_without_init_says_what_to_call(tmp_path):
    assert wandb.run is None
    learn = synth_learner(n_trn=2, path=tmp_path)
    with pytest.raises(ValueError, match=r'call `wandb.init\(project=...\)`'):
        learn.fit(1, cbs=WandbCallback(log_preds=False))


def test_async_save_logs_the_same_best_model(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.1, 0.4, 0.8, 0.6], 'accuracy'))
    keep = KeepWeights()
    learn.fit(4, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy', async_save=True), WandbCallback(log_model=True, log_preds=False), keep])
    art = [a for a in _logged(offline_run).artifacts if a['type'] == 'model'][0]
    assert art['metadata']['epoch'] == 2 and set(art['aliases']) == {'best', 'best-accuracy', 'epoch-2', 'latest'}
    assert_same_weights(torch.load(tmp_path / 'models' / 'model.pth', weights_only=True), keep.weights[2])


def _scaled_mse(i):
    "A small fastai metric of its own name: the mean squared error times `i+1`"
    from fastai.metrics import AvgMetric
    def f(inp, targ): return ((inp - targ)**2).mean() * (i + 1)
    f.__name__ = f'mse_x{i:03d}'
    return AvgMetric(f)


def test_more_values_than_wandb_takes_as_keys_all_reach_the_artifact(tmp_path, offline_run):
    "123 values (W&B takes at most 100 metadata keys): the artifact is logged and holds them all; the .json keeps them flat"
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=[_scaled_mse(i) for i in range(120)])
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(), WandbCallback(log_model=True, log_preds=False)])
    assert not [w for w in ws if 'could not log' in str(w.message)], [str(w.message) for w in ws]
    rec, names = learn.recorder.values, learn.recorder.metric_names[1:-1]  # without 'epoch' and 'time'
    best = min(range(3), key=lambda e: rec[e][1])  # the lowest valid_loss, as SaveModelCallback() monitors
    want = {'epoch': best, 'iteration': (best + 1) * len(learn.dls.train), **{n: float(v) for n, v in zip(names, rec[best])}}
    assert len(want) == 124 and len(set(want.values())) > 100
    models = [a for a in _logged(offline_run).artifacts if a['type'] == 'model']
    assert len(models) == 1
    meta = models[0]['metadata']
    assert len(meta) <= 100
    assert meta['provenance'] == read_checkpoint(tmp_path / 'models' / 'model.pth')['provenance']
    got = {k: v for k, v in meta.items() if k not in ('metrics', 'provenance')} | meta.get('metrics', {})
    assert got == want
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata'] == want
