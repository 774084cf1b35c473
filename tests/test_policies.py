"""The checkpoint policies end to end: the k best, every epoch's, periodic saves, interruption (in a child process sent
SIGTERM and SIGINT mid-epoch, and SIGKILLed during a top-k replacement), several monitors, EarlyStopping, and a save that
fails on a full disk. Each reads the files, their `.json`s and, for W&B, the offline run log back, against a scripted
metric whose best epochs are known in advance and the weights kept by `KeepWeights`."""
import errno, json, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
import fastai_bestmodel.checkpoint as ckpt
from fastai_bestmodel.checkpoint import read_checkpoint, load_checkpoint, verify_checkpoint, list_checkpoints, CheckpointWriteError
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from fastai_bestmodel.wandb import WandbCallback
from fastai_bestmodel.offline import read_offline_run
from conftest import KeepWeights, assert_same_weights, python_env

HERE = Path(__file__).parent


def _models(run):
    run.finish()
    return [a for a in read_offline_run(Path(run.dir).parent).artifacts if a['type'] == 'model']


def _on_disk(folder, prefix):
    "{file name: epoch} of the checkpoints in `folder` whose name starts with `prefix`, each loaded with its digest checked"
    return {p.with_suffix('.pth').name: d['metadata']['epoch'] for p, d in list_checkpoints(folder) if p.name.startswith(prefix)}


@pytest.mark.parametrize('async_save', [False, True])
def test_top_k_keeps_the_k_best_each_with_its_own_weights_and_metrics(tmp_path, offline_run, async_save):
    scores = [0.3, 0.8, 0.5, 0.9, 0.6, 0.85, 0.2]  # the 3 best: epoch 3 (0.9), 5 (0.85), 1 (0.8)
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric(scores, 'accuracy'))
    keep = KeepWeights()
    cb = SaveModelCallback(monitor='accuracy', save_top_k=3, filename='{epoch:02d}-{accuracy:.2f}', async_save=async_save, save_last=True)
    learn.fit(len(scores), lr=1e-1, cbs=[cb, WandbCallback(log_model=True, log_preds=False), keep])
    models = tmp_path / 'models'
    assert _on_disk(models, '') == {'model.pth': 3, 'epoch=05-accuracy=0.85.pth': 5, 'epoch=01-accuracy=0.80.pth': 1, 'model_last.pth': 6}
    rows = learn.recorder.values
    for name, epoch in _on_disk(models, '').items():
        state, desc = load_checkpoint(models / name)
        assert_same_weights(state, keep.weights[epoch])
        assert desc['metadata'] == {'epoch': epoch, 'iteration': (epoch + 1) * len(learn.dls.train), 'train_loss': float(rows[epoch][0]), 'valid_loss': float(rows[epoch][1]), 'accuracy': scores[epoch]}
    assert {read_checkpoint(models / n)['reason'] for n in ('model', 'epoch=05-accuracy=0.85', 'model_last')} == {'best', 'top_k', 'last'}
    assert_same_weights(learn.model.state_dict(), keep.weights[3])
    assert [p.name for p in cb.best_k_models] == ['model.pth', 'epoch=05-accuracy=0.85.pth', 'epoch=01-accuracy=0.80.pth']
    # W&B logs the best only (retention of the others is the artifacts issue), with the best epoch's metrics
    logged = _models(offline_run)
    assert [(a['metadata']['epoch'], 'best' in a['aliases']) for a in logged] == [(3, True)]


def test_save_top_k_minus_one_keeps_every_epoch_and_zero_keeps_no_best(tmp_path):
    scores = [0.3, 0.8, 0.5]
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric(scores, 'accuracy'))
    learn.fit(3, lr=1e-1, cbs=SaveModelCallback(monitor='accuracy', save_top_k=-1, filename='all-{epoch}'))
    assert _on_disk(tmp_path / 'models', '') == {'model.pth': 1, 'all-epoch=0.pth': 0, 'all-epoch=2.pth': 2}
    learn = synth_learner(n_trn=2, path=tmp_path / 'zero', metrics=ScriptedMetric(scores, 'accuracy'))
    keep = KeepWeights()
    with __import__('warnings').catch_warnings(record=True) as ws:
        learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy', save_top_k=0, save_last=True), keep])
    assert _on_disk(tmp_path / 'zero' / 'models', '') == {'model_last.pth': 2} and not ws  # nothing loaded, nothing to warn of
    assert_same_weights(learn.model.state_dict(), keep.weights[2])


def test_periodic_saves_every_n_steps_keep_the_newest_and_say_where_they_were(tmp_path):
    learn = synth_learner(n_trn=6, path=tmp_path)  # 6 batches an epoch
    seen = []
    class Watch(Callback):
        order = 70  # after the tracker
        def after_batch(self):
            if self.training: seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
    cb = SaveModelCallback(fname='m', every_n_train_steps=4, keep_last_n=2, async_save=True)
    learn.fit(3, lr=1e-2, cbs=[cb, Watch()])
    models = tmp_path / 'models'
    assert [r.iteration for r in cb.records if r.reason == 'periodic'] == [4, 8, 12, 16]
    assert sorted(_on_disk(models, 'm_step')) == ['m_step12.pth', 'm_step16.pth']
    state, desc = load_checkpoint(models / 'm_step16.pth')
    assert_same_weights(state, seen[15])  # the weights after the 16th training batch
    m = desc['metadata']
    assert (desc['reason'], m['epoch'], m['iteration'], m['values_of_epoch']) == ('periodic', round(16 / 6, 6), 16, 1)
    assert m['valid_loss'] == float(learn.recorder.values[1][1])  # the latest recorded values, marked as epoch 1's
    assert read_checkpoint(models / 'm.pth')['reason'] == 'best'  # the best is kept besides


def test_train_time_interval_saves_by_the_clock(tmp_path):
    learn = synth_learner(n_trn=5, path=tmp_path)
    class Slow(Callback):
        def after_batch(self): time.sleep(0.05)
    cb = SaveModelCallback(fname='t', train_time_interval=0.12, save_top_k=0)
    learn.fit(2, lr=1e-2, cbs=[cb, Slow()])
    its = [r.iteration for r in cb.records if r.reason == 'periodic']
    assert len(its) >= 2 and its == sorted(set(its)), its  # 10 batches of >= 50 ms: at least 0.5 s, so at least two saves 0.12 s apart
    assert sorted(_on_disk(tmp_path / 'models', 't_step')) == sorted(f't_step{i}.pth' for i in its)
    cb = SaveModelCallback(fname='never', train_time_interval=3600, save_top_k=0)  # an hour: no periodic save in this fit
    learn.fit(2, lr=1e-2, cbs=[cb, Slow()])
    assert not [r for r in cb.records if r.reason == 'periodic']


def _interrupt(tmp_path, sig):
    child = subprocess.Popen([sys.executable, str(HERE / 'policy_child.py'), 'interrupt', str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=python_env(), text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / 'ready').exists():
        assert child.poll() is None and time.monotonic() < deadline, child.stdout.read() if child.poll() is not None else 'timeout'
        time.sleep(0.02)
    child.send_signal(sig)
    out = child.communicate(timeout=60)[0]
    return child.returncode, json.loads((tmp_path / 'seen.json').read_text()), out


@pytest.mark.parametrize('sig,exception,code', [(signal.SIGTERM, 'TrainingTerminated', 143), (signal.SIGINT, 'KeyboardInterrupt', None)])
def test_a_signal_mid_epoch_leaves_an_interrupted_checkpoint_then_stops(tmp_path, sig, exception, code):
    returncode, seen, out = _interrupt(tmp_path, sig)
    assert seen['exception'] == exception and seen['sigterm_default']  # the handler is gone: a second SIGTERM kills
    if code: assert returncode == code and seen['code'] == code  # as `sys.exit(143)`: 128 + SIGTERM
    else: assert returncode != 0
    state, desc = load_checkpoint(tmp_path / 'models' / 'model_interrupted.pth')
    m = desc['metadata']
    assert (desc['reason'], m['exception'], m['iteration'], m['epoch'], m['values_of_epoch']) == ('interrupted', exception, 8, 1.6, 0)
    assert state['a'].item() == seen['weights']  # the weights at the moment it stopped
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 0  # the best so far is untouched
    assert f'{exception} during training, at epoch 1.6 (iteration 8)' in out


@pytest.mark.parametrize('kill_after', [1, 2, 3])  # the previous best linked aside; the new best committed; the worst's .json deleted
def test_sigkill_during_a_top_k_replacement_leaves_every_kept_checkpoint_loadable(tmp_path, kill_after):
    child = subprocess.run([sys.executable, str(HERE / 'policy_child.py'), 'topk-kill', str(tmp_path), str(kill_after)],
                           capture_output=True, text=True, env=python_env(), timeout=300)
    assert child.returncode == -signal.SIGKILL and not (tmp_path / 'finished').exists(), child.stdout + child.stderr
    models = tmp_path / 'models'
    found = _on_disk(models, '')
    for name, epoch in found.items():
        state, _ = load_checkpoint(models / name)  # digest checked
        assert all(torch.all(v == float(epoch)) for v in state.values()), name
    assert found['model.pth'] == (2 if kill_after >= 2 else 1)
    assert 1 in found.values()  # the previous best is never lost: under its own name, or still as model.pth
    assert len(found) <= 3
    assert not [p.name for p in models.glob('*.pth') if not p.with_suffix('.json').exists()]  # no weights that nothing describes
    ckpt.finish_interrupted_saves(models)  # as the next fit's tracker does first
    assert not [p.name for p in models.iterdir() if p.name.startswith('.')] and set(_on_disk(models, '')) == set(found)


def test_sigterm_during_a_write_without_save_on_exception_leaves_no_temporary_file(tmp_path):
    child = subprocess.Popen([sys.executable, str(HERE / 'policy_child.py'), 'sigterm-write', str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    for _ in range(3000):
        if (tmp_path / 'ready').exists() or child.poll() is not None: break
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err[-2000:]  # `TrainingTerminated`: 128 + SIGTERM
    assert not [p.name for p in (tmp_path / 'models').iterdir()], err[-2000:]  # the write was rolled back: no hidden .tmp


def test_a_failed_background_write_is_never_kept_under_another_epochs_name(tmp_path, monkeypatch):
    import threading, fastai_bestmodel.writer as writer
    real, release = writer.save_checkpoint, threading.Event()
    def full_disk_at_epoch_3(path, state, metadata, **kw):  # a test double of a disk that fills while epoch 3's best is written
        if metadata['epoch'] != 3: return real(path, state, metadata, **kw)
        release.wait(60)
        raise CheckpointWriteError(errno.ENOSPC, f'Could not write checkpoint {path}: No space left on device.')
    monkeypatch.setattr(writer, 'save_checkpoint', full_disk_at_epoch_3)
    class Release(Callback):
        order = 63  # after the tracker has queued epoch 4's save behind epoch 3's
        def after_epoch(self):
            if self.epoch == 4: release.set()
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.6, 0.7, 0.8, 0.9], 'score'))
    keep = KeepWeights()
    with pytest.raises(CheckpointWriteError, match='No space left on device'):
        learn.fit(5, lr=1e-1, cbs=[SaveModelCallback(monitor='score', comp='max', save_top_k=3, async_save=True), keep, Release()])
    found = _on_disk(tmp_path / 'models', '')
    assert 3 not in found.values(), found  # epoch 3 was never written: no file may say it holds it
    for name, epoch in found.items(): assert_same_weights(load_checkpoint(tmp_path / 'models' / name)[0], keep.weights[epoch])


def test_a_full_disk_during_a_top_k_save_deletes_nothing(tmp_path, monkeypatch):
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.6, 0.7], 'accuracy'))
    real, calls = ckpt.write_tmp, []
    def fail_third_save(*args, **kwargs):
        calls.append(args[1])
        if len([c for c in calls if c.endswith('.pth')]) == 3:  # epoch 2's new best: the disk fills as it is written
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(*args, **kwargs)
    monkeypatch.setattr(ckpt, 'write_tmp', fail_third_save)
    with pytest.raises(CheckpointWriteError, match='No space left on device'):
        learn.fit(3, lr=1e-1, cbs=SaveModelCallback(monitor='accuracy', save_top_k=2, filename='k-{epoch}'))
    found = _on_disk(tmp_path / 'models', '')
    # the previous best was linked aside before the save, which failed: the one it would have pushed out is still there
    assert found == {'model.pth': 1, 'k-epoch=0.pth': 0, 'k-epoch=1.pth': 1}, found
    for name in found: verify_checkpoint(tmp_path / 'models' / name)


def test_two_monitors_each_keep_and_log_their_own_best(tmp_path, offline_run):
    scores = [0.5, 0.6, 0.9, 0.7]  # accuracy's best: epoch 2
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric(scores, 'accuracy'))
    keep = KeepWeights()
    by_loss, by_acc = SaveModelCallback(fname='by_loss'), SaveModelCallback(monitor='accuracy', fname='by_acc')
    learn.fit(4, lr=1e-1, cbs=[by_loss, by_acc, WandbCallback(log_model=True, log_preds=False), keep])
    losses = [float(r[1]) for r in learn.recorder.values]
    loss_best = losses.index(min(losses))
    assert (by_loss.best_epoch, by_acc.best_epoch) == (loss_best, 2)
    assert_same_weights(learn.model.state_dict(), keep.weights[2])  # the last added decides
    offline_run.finish()
    logged = read_offline_run(Path(offline_run.dir).parent)
    arts = {a['name'].rsplit('-', 1)[-1]: a for a in logged.artifacts if a['type'] == 'model'}
    assert set(arts['by_acc']['aliases']) >= {'best', 'best-accuracy', 'epoch-2'}
    assert 'best' not in arts['by_loss']['aliases'] and 'best-valid_loss' in arts['by_loss']['aliases']
    assert arts['by_loss']['metadata']['valid_loss'] == min(losses) and arts['by_acc']['metadata']['accuracy'] == 0.9
    s = logged.summary
    assert s['best-valid_loss']['epoch'] == loss_best and s['best-valid_loss']['valid_loss'] == min(losses)
    assert s['best-accuracy']['epoch'] == 2 and s['best-accuracy']['accuracy'] == 0.9
    assert (s['best_epoch'], s['best_accuracy'], s['best_valid_loss']) == (2, 0.9, losses[2])  # flat: the deciding tracker's


def test_early_stopping_keeps_loads_and_logs_the_best(tmp_path, offline_run):
    scores = [0.5, 0.9, 0.6, 0.7, 0.8, 0.95]  # stops after epoch 3 (patience 2); 0.95 is never reached
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric(scores, 'accuracy'))
    keep = KeepWeights()
    learn.fit(6, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy', save_on_exception=True, save_last=True),
                               EarlyStoppingCallback(monitor='accuracy', patience=2), WandbCallback(log_model=True, log_preds=False), keep])
    assert len(learn.recorder.values) == 4
    assert_same_weights(learn.model.state_dict(), keep.weights[1])
    assert _on_disk(tmp_path / 'models', '') == {'model.pth': 1, 'model_last.pth': 3}  # no `_interrupted`: not an interruption
    (art,) = _models(offline_run)
    assert art['metadata']['epoch'] == 1 and art['metadata']['accuracy'] == 0.9 and 'best' in art['aliases']


def test_an_exception_mid_fit_leaves_an_interrupted_checkpoint_and_goes_on(tmp_path):
    class Fail(Callback):
        def after_batch(self):
            if self.training and self.epoch == 2 and self.iter == 1: raise RuntimeError('CUDA out of memory (scripted)')
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'))
    keep = KeepWeights()
    cb = SaveModelCallback(monitor='accuracy', save_on_exception=True, async_save=True)
    with pytest.raises(RuntimeError, match='scripted'):
        learn.fit(3, lr=1e-1, cbs=[cb, Fail(), keep])
    state, desc = load_checkpoint(tmp_path / 'models' / 'model_interrupted.pth')
    assert (desc['metadata']['exception'], desc['metadata']['iteration'], desc['metadata']['values_of_epoch']) == ('RuntimeError', 10, 1)
    assert desc['metadata']['accuracy'] == 0.9  # epoch 1's, the latest recorded, marked as such
    assert_same_weights(state, learn.model.state_dict())  # the weights when it failed
    assert_same_weights(load_checkpoint(tmp_path / 'models' / 'model.pth')[0], keep.weights[1])  # the best, written in the background, is on disk
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the SIGTERM handler did not outlive the fit


def test_a_later_fit_never_overwrites_an_earlier_fits_top_k_files(tmp_path):
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.6, 0.7], 'accuracy'))
    keep = KeepWeights()
    cb = SaveModelCallback(monitor='accuracy', save_top_k=-1, filename='{epoch:02d}', every_n_train_steps=2)
    learn.fit(3, lr=1e-1, cbs=[cb, keep])
    first = {n: load_checkpoint(tmp_path / 'models' / n)[0] for n in ('epoch=00.pth', 'epoch=01.pth', 'model_step2.pth')}
    learn.fit(3, lr=1e-1, cbs=[cb])  # the same names come up again: they get -v1
    on_disk = _on_disk(tmp_path / 'models', '')
    assert {'epoch=00-v1.pth', 'epoch=01-v1.pth', 'model_step2-v1.pth'} <= set(on_disk)
    for n, state in first.items(): assert_same_weights(load_checkpoint(tmp_path / 'models' / n)[0], state)
    assert_same_weights(first['epoch=00.pth'], keep.weights[0])


def test_two_trackers_naming_top_k_files_alike_are_refused_before_the_first_batch(tmp_path):
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.6], 'accuracy'))
    a = SaveModelCallback(fname='a', save_top_k=3, filename='{epoch:02d}')
    b = SaveModelCallback(monitor='accuracy', fname='b', save_top_k=3, filename='{epoch:02d}')
    with pytest.raises(ValueError, match='by the same `filename`'): learn.fit(2, cbs=[a, b])
    assert not (tmp_path / 'models').exists() or not list((tmp_path / 'models').iterdir())


def test_periodic_checkpoints_in_fine_tunes_second_fit_carry_the_latest_values(tmp_path):
    learn = synth_learner(n_trn=4, path=tmp_path)
    rows = []
    class Rows(Callback):
        order = 70
        def after_epoch(self): rows.append(float(self.recorder.values[-1][1]))
    learn.fine_tune(2, cbs=[SaveModelCallback(every_n_train_steps=3), Rows()])  # epoch 0 frozen (4 batches), then epochs 1 and 2
    m = read_checkpoint(tmp_path / 'models' / 'model_step6.pth')['metadata']  # in the second fit's first epoch
    assert (m['iteration'], m['values_of_epoch'], m['valid_loss']) == (6, 0, rows[0])
