"""The tracker and the W&B callback combined with the rest of fastai, as users combine them: `fine_tune`, several fits in
one W&B run, `validate`, `export`/`load_learner`, asynchronous saves every epoch, a NaN in another column, a vector
metric, and two processes training into one folder. Each test failed on the code before these fixes."""
import json, math, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch, wandb
from torch import nn
from fastai.test_utils import synth_learner
from fastai.learner import load_learner
from fastai.callback.core import Callback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from fastai_bestmodel.wandb import WandbCallback
from fastai_bestmodel.offline import read_offline_run
from fastai_bestmodel.checkpoint import read_checkpoint, load_checkpoint, verify_checkpoint
from conftest import KeepWeights, assert_same_weights, python_env

HERE = Path(__file__).parent


class Sequence(ScriptedMetric):
    "The i-th value at the i-th validation, counted across fits (ScriptedMetric counts the epochs of one fit)"
    def __init__(self, values, name): super().__init__(values, name); self.i = -1
    def reset(self): self.i += 1
    @property
    def value(self): return self.values[self.i]


class KeepAll(KeepWeights):
    "KeepWeights over several fits"
    def before_fit(self): self.weights = getattr(self, 'weights', [])


def _logged(run):
    run.finish()
    return read_offline_run(Path(run.dir).parent)


def _models(logged): return [a for a in logged.artifacts if a['type'] == 'model']


def test_fine_tune_keeps_and_logs_the_best_of_both_fits(tmp_path, offline_run):
    scores = [0.9, 0.5, 0.6]  # the frozen epoch is best: the unfrozen fit must not replace it anywhere
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=Sequence(scores, 'accuracy'))
    keep = KeepAll()
    learn.fine_tune(2, base_lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False), keep])
    logged = _logged(offline_run)
    assert [a['metadata']['accuracy'] for a in _models(logged)] == [0.9]  # the same weights are not uploaded twice
    assert logged.summary['best_accuracy'] == 0.9 and logged.summary['best_epoch'] == 0
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 0
    assert_same_weights(learn.model.state_dict(), keep.weights[0])
    assert not torch.equal(keep.weights[0]['a'], keep.weights[-1]['a'])


def test_fine_tune_numbers_epochs_over_the_run(tmp_path, offline_run):
    scores = [0.5, 0.6, 0.95, 0.7]  # best: the second epoch of the unfrozen fit, epoch 2 of the run
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=Sequence(scores, 'accuracy'))
    keep = KeepAll()
    learn.fine_tune(3, base_lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False), keep])
    logged = _logged(offline_run)
    models = _models(logged)
    # one training: the frozen fit's end uploads nothing; the training's best is uploaded once, at its end
    assert [(a['metadata']['epoch'], a['metadata']['accuracy']) for a in models] == [(2, 0.95)]
    assert 'best' in models[-1]['aliases'] and 'epoch-2' in models[-1]['aliases']
    assert logged.summary['best_accuracy'] == 0.95 and logged.summary['best_epoch'] == 2
    # the epoch W&B's charts give that model (fastai numbers them over the run) is the same
    rows = [h for h in logged.history if 'accuracy' in h]
    assert [h['accuracy'] for h in rows] == scores and rows[2]['epoch'] == 3  # the chart's epoch counts epochs ended
    assert_same_weights(torch.load(tmp_path / 'models' / 'model.pth', weights_only=True), keep.weights[2])


def test_a_worse_later_fit_never_takes_the_runs_best(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=Sequence([0.5, 0.95, 0.7, 0.6, 0.8], 'accuracy'))
    cbs = [SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False)]
    learn.fit_one_cycle(3, 1e-1, cbs=cbs)
    learn.fit_one_cycle(2, 1e-1, cbs=cbs)  # a notebook's fit cell run again: its best, 0.8, is worse than 0.95
    logged = _logged(offline_run)
    models = _models(logged)
    assert [a['metadata']['accuracy'] for a in models] == [0.95, 0.8]
    assert 'best' in models[0]['aliases'] and 'epoch-1' in models[0]['aliases']
    assert 'best' not in models[1]['aliases'] and 'epoch-4' in models[1]['aliases']  # run epoch 4: the second fit's epoch 1
    assert logged.summary['best_accuracy'] == 0.95 and logged.summary['best_epoch'] == 1
    # The local file keeps fastai's meaning of reset_on_fit=True: the last fit's best
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['accuracy'] == 0.8


def test_the_tracker_wandb_adds_does_not_outlive_its_fit(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'),
                          cbs=WandbCallback(log_model=True, log_preds=False))
    learn.fit(3, lr=1e-1)
    assert not any(isinstance(cb, SaveModelCallback) for cb in learn.cbs)
    learn.validate()
    # The user's own tracker in the next fit is the only one writing model.pth
    learn.metrics[0].values = [0.9, 0.6, 0.5, 0.55, 0.5, 0.4]
    keep, mine = KeepWeights(), SaveModelCallback(monitor='accuracy')
    learn.fit(6, lr=1e-1, cbs=[mine, keep])
    assert mine.best_epoch == 0
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 0
    assert_same_weights(learn.model.state_dict(), keep.weights[0])
    logged = _logged(offline_run)
    assert logged.summary['best_accuracy'] == 0.9
    assert [a['metadata']['accuracy'] for a in _models(logged) if 'best' in a['aliases']][-1] == 0.9


def test_validate_after_fit_changes_nothing_logged_or_saved(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'),
                          cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False)])
    learn.fit(3, lr=1e-1)
    files = {p.name: p.read_bytes() for p in (tmp_path / 'models').iterdir()}
    learn.validate()
    learn.get_preds()
    assert {p.name: p.read_bytes() for p in (tmp_path / 'models').iterdir()} == files
    logged = _logged(offline_run)
    assert len(_models(logged)) == 1 and logged.summary['best_epoch'] == 1 and logged.summary['best_accuracy'] == 0.9


def test_artifacts_are_named_per_run(tmp_path):
    names = []
    for i in range(2):
        run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
        learn = synth_learner(n_trn=2, path=tmp_path / str(i), metrics=ScriptedMetric([0.5, 0.9], 'accuracy'))
        learn.fit(2, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False)])
        names += [(a['name'], run.id) for a in _models(_logged(run))]
    assert [n for n, _ in names] == [f'run-{i}-model' for _, i in names]
    assert names[0][0] != names[1][0]


def test_a_nan_in_another_column_still_uploads(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=[ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'),
                                                           ScriptedMetric([1.0, float('nan'), float('inf')], 'ratio')])
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False)])
    assert not [w for w in ws if 'could not log' in str(w.message)]
    logged = _logged(offline_run)
    (art,) = _models(logged)
    assert art['metadata']['ratio'] == 'NaN' and art['metadata']['accuracy'] == 0.9
    assert logged.summary['best_ratio'] == 'NaN'
    text = (tmp_path / 'models' / 'model.json').read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} in the .json is not JSON'))


def test_async_every_epoch_keeps_every_epoch(tmp_path):
    learn = synth_learner(n_trn=1, n_val=1, path=tmp_path)
    learn.model.ballast = nn.Parameter(torch.zeros(12_500_000), requires_grad=False)  # 50 MB: writes outlast epochs
    keep = KeepWeights()
    with learn.no_bar(), learn.no_logging():
        learn.fit(6, lr=1e-2, cbs=[SaveModelCallback(every_epoch=True, async_save=True), keep])
    assert sorted(p.name for p in (tmp_path / 'models').glob('*.pth')) == [f'model_{i}.pth' for i in range(6)]
    for i in range(6):
        state, desc = load_checkpoint(tmp_path / 'models' / f'model_{i}.pth')
        assert desc['metadata']['epoch'] == i
        assert torch.equal(state['a'], keep.weights[i]['a'])


def test_export_and_load_learner_with_an_async_tracker(tmp_path):
    from fastai_bestmodel.test_utils import digits_learner
    learn = digits_learner(path=tmp_path, cbs=SaveModelCallback(monitor='accuracy', async_save=True))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    learn.export()
    learn2 = load_learner(tmp_path / 'export.pkl')
    assert_same_weights(learn2.model.state_dict(), learn.model.state_dict())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)  # the exported learner's tracker still saves
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 0


def test_a_vector_metric_is_stored_as_a_list(tmp_path):
    from fastai.metrics import Precision, accuracy
    from fastai_bestmodel.test_utils import digits_learner
    learn = digits_learner(path=tmp_path, metrics=[accuracy, Precision(average=None)])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2, cbs=SaveModelCallback(monitor='accuracy'))
    meta = read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']
    assert len(meta['precision_score']) == 10 and all(isinstance(v, float) for v in meta['precision_score'])
    row = learn.recorder.values[meta['epoch']]
    assert np.allclose(meta['precision_score'], row[3])


CHILD = """
import sys, warnings
from fastai.test_utils import synth_learner
from torch import nn
import torch
from fastai_bestmodel.tracker import SaveModelCallback
warnings.simplefilter('always')
learn = synth_learner(n_trn=2, n_val=1, path=sys.argv[1])
learn.model.ballast = nn.Parameter(torch.zeros(4_000_000), requires_grad=False)  # 16 MB
cb = SaveModelCallback(monitor='train_loss')
with learn.no_bar(), learn.no_logging(): learn.fit(8, lr=1e-3, cbs=cb)
print('done', cb.best_epoch)
"""


@pytest.mark.parametrize('trial', range(3))
def test_two_processes_training_into_one_folder(tmp_path, trial):
    "Two sweep agents sharing `learn.path`: both finish; the pair on disk is consistent; a replaced file is said to be"
    procs = [subprocess.Popen([sys.executable, '-c', CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=python_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert 'Traceback' not in err and 'Free some space' not in err
        assert 'done' in out
    weights, desc = verify_checkpoint(tmp_path / 'models' / 'model.pth')  # the .json and the weights are one save's
    assert weights == tmp_path / 'models' / 'model.pth'
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['model.json', 'model.pth']
    # A process whose checkpoint the other replaced did not load it, and said why
    replaced = sum('is no longer the checkpoint this fit saved' in err for _, err in outs)
    print(f'\ntrial {trial}: {replaced} of 2 processes found their checkpoint replaced by the other')


def test_a_checkpoint_replaced_by_another_save_is_not_loaded(tmp_path):
    "What the two processes above may do to each other, made certain: another run's save lands before this fit ends"
    from fastai.callback.core import Callback
    from fastai_bestmodel.checkpoint import save_checkpoint

    class OtherRun(Callback):
        order = 55  # its after_fit runs before the tracker's (61), as the other process's save would, between them
        def after_fit(self): save_checkpoint(tmp_path / 'models' / 'model.pth', {'a': torch.full((1,), 42.)}, {'epoch': 0})

    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'))
    keep = KeepWeights()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy'), OtherRun(), keep])
    msg = ' '.join(str(w.message) for w in ws)
    assert 'is no longer the checkpoint this fit saved' in msg and 'epoch 1' in msg
    assert_same_weights(learn.model.state_dict(), keep.weights[-1])  # its final weights, not the other run's
    assert learn.model.a.item() != 42.


class ScriptedValidLoss(KeepWeights):
    "Replaces the recorded valid_loss of each epoch by a scripted one (after the recorder, before the tracker)"
    order = 55
    def __init__(self, values): self.values, self.i = list(values), -1
    def before_fit(self): pass
    def after_epoch(self):
        self.i += 1
        self.recorder.values[-1][1] = self.values[self.i]


def test_fine_tune_with_the_tracker_wandb_adds_keeps_the_best_of_both(tmp_path, offline_run):
    learn = synth_learner(n_trn=4, path=tmp_path)
    keep = KeepAll()
    # frozen epochs 0.7, 0.1 (best); unfrozen 0.5, 0.4, 0.3: none better
    learn.fine_tune(3, freeze_epochs=2, base_lr=1e-1, cbs=[WandbCallback(log_model=True, log_preds=False),
                                                           ScriptedValidLoss([0.7, 0.1, 0.5, 0.4, 0.3]), keep])
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['valid_loss'] == pytest.approx(0.1)
    assert read_checkpoint(tmp_path / 'models' / 'model.pth')['metadata']['epoch'] == 1
    assert_same_weights(learn.model.state_dict(), keep.weights[1])
    assert not any(isinstance(cb, SaveModelCallback) for cb in learn.cbs)
    logged = _logged(offline_run)
    assert logged.summary['best_valid_loss'] == pytest.approx(0.1) and logged.summary['best_epoch'] == 1
    assert [a['metadata']['epoch'] for a in _models(logged)] == [1]


def test_after_an_interrupted_fit_the_users_own_tracker_is_the_one(tmp_path, offline_run):
    from fastai.callback.core import Callback
    class CtrlC(Callback):
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt()
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'),
                          cbs=WandbCallback(log_model=True, log_preds=False))
    with pytest.raises(KeyboardInterrupt): learn.fit(3, lr=1e-1, cbs=CtrlC())
    mine = SaveModelCallback(monitor='accuracy')  # the same file name as the tracker the interrupted fit left behind
    learn.fit(3, lr=1e-1, cbs=mine)
    assert [cb for cb in learn.cbs if isinstance(cb, SaveModelCallback)] == []
    assert mine.best_epoch == 1
    # The interrupted fit uploaded its best so far (epoch 0); W&B's `best` moved to the second fit's better model
    logged = _logged(offline_run)
    (art,) = [v for v in logged.versions(f'run-{offline_run.id}-model') if 'best' in v['aliases']]
    assert art['metadata']['accuracy'] == 0.9 and art['metadata']['epoch'] == 1


CRASH = """
import sys, torch
from torch import nn
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
class Crash(Callback):
    order = 70
    def after_epoch(self):
        if self.epoch == 1: raise RuntimeError('the script fails')
learn = synth_learner(n_trn=1, n_val=1, path=sys.argv[1], metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'))
learn.model.ballast = nn.Parameter(torch.zeros(25_000_000), requires_grad=False)  # 100 MB: the write outlasts the crash
learn.fit(3, lr=1e-3, cbs=[SaveModelCallback(monitor='accuracy', async_save=True), Crash()])  # with its messages
"""


def test_a_script_that_dies_keeps_the_async_save_it_announced(tmp_path):
    p = subprocess.run([sys.executable, '-c', CRASH, str(tmp_path)], capture_output=True, text=True, env=python_env(), timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]  # the exception's exit code, not an abort from a killed writer thread
    assert 'Better model found at epoch 1' in p.stdout and 'the script fails' in p.stderr
    state, desc = load_checkpoint(tmp_path / 'models' / 'model.pth')
    assert desc['metadata']['epoch'] == 1 and desc['metadata']['accuracy'] == 0.9


@pytest.mark.parametrize('async_save', [False, True])
def test_save_last_keeps_the_latest_beside_the_best_and_logs_the_best(tmp_path, offline_run, async_save):
    learn = synth_learner(n_trn=4, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7], 'accuracy'))
    keep = KeepWeights()
    learn.fit(3, lr=1e-1, cbs=[SaveModelCallback(monitor='accuracy', save_last=True, async_save=async_save),
                               WandbCallback(log_model=True, log_preds=False), keep])
    assert_same_weights(load_checkpoint(tmp_path / 'models' / 'model_last.pth')[0], keep.weights[2])
    assert_same_weights(load_checkpoint(tmp_path / 'models' / 'model.pth')[0], keep.weights[1])
    assert_same_weights(learn.model.state_dict(), keep.weights[1])
    logged = _logged(offline_run)
    (art,) = _models(logged)
    assert art['metadata']['epoch'] == 1 and 'best' in art['aliases'] and {f['path'] for f in art['files']} == {'model.pth', 'model.json'}
    assert logged.summary['best_accuracy'] == 0.9


def test_export_with_a_wandb_callback_attached(tmp_path, offline_run):
    from fastai_bestmodel.test_utils import digits_learner
    learn = digits_learner(path=tmp_path, cbs=WandbCallback(log_model=True, log_preds=False))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    learn.export()
    assert_same_weights(load_learner(tmp_path / 'export.pkl').model.state_dict(), learn.model.state_dict())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)  # and the callback still logs afterwards
    assert len(_models(_logged(offline_run))) == 2


def test_no_validation_set_is_said_to_be_that(tmp_path):
    learn = synth_learner(n_trn=4, n_val=0, path=tmp_path)
    with pytest.raises(ValueError, match="the learner's validation set is empty, so 'valid_loss' is never recorded"):
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2, cbs=SaveModelCallback())  # before the first batch
    assert learn.train_iter == 0
    learn.fit(1, 1e-2, cbs=SaveModelCallback(monitor='train_loss', fname='t'))
    assert 'valid_loss' not in read_checkpoint(tmp_path / 'models' / 't.pth')['metadata']  # not computed: left out, not NaN


def test_improvements_are_said_once_each_with_the_file_and_not_under_no_logging_or_no_bar(tmp_path, capsys):
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.5, 0.9, 0.7, 0.95], 'accuracy'))
    learn.fit(4, lr=1e-2, cbs=SaveModelCallback(monitor='accuracy'))
    said = [l for l in capsys.readouterr().out.splitlines() if 'Better model found' in l]
    # fastai's words, the value with four significant digits and the file relative to `learn.path`: 80 columns
    assert [l.split('Better model found at ')[1] for l in said] == [
        f'epoch {e} with accuracy {v}; saving models/model.pth.' for e, v in [(0, 0.5), (1, 0.9), (3, 0.95)]]
    assert max(len(l) for l in said) <= 80
    for quiet in (learn.no_logging, learn.no_bar):
        with quiet(): learn.fit(4, lr=1e-2, cbs=SaveModelCallback(monitor='accuracy'))
        assert 'Better model found' not in capsys.readouterr().out


class Perturb(KeepWeights):
    "Changes every weight after the tracker saved and KeepWeights copied them, as a callback between epochs may (through `.data`)"
    order = KeepWeights.order + 1
    def before_fit(self): pass
    def after_epoch(self):
        for p in self.model.parameters(): p.data.add_(0.5)


@pytest.mark.parametrize('async_save', [False, True])
def test_weights_changed_between_epochs_never_reach_the_epochs_checkpoint(tmp_path, async_save):
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.1, 0.2, 0.3, 0.4], 'accuracy'))
    learn.model.ballast = nn.Parameter(torch.zeros(5_000_000))  # 20 MB: the write outlasts the change
    keep, cb = KeepWeights(), SaveModelCallback(monitor='accuracy', every_epoch=True, async_save=async_save)
    with learn.no_bar(), learn.no_logging(): learn.fit(4, lr=1e-2, cbs=[cb, keep, Perturb()])
    for e in range(4):
        state, desc = load_checkpoint(tmp_path / 'models' / f'model_{e}.pth')
        assert desc['metadata']['epoch'] == e
        assert_same_weights(state, keep.weights[e])
        assert not torch.equal(state['a'], keep.weights[e]['a'] + 0.5)


@pytest.mark.parametrize('async_save', [True])
def test_log_model_all_with_async_saves_uploads_every_best_before_the_next_replaces_it(tmp_path, offline_run, async_save):
    learn = synth_learner(n_trn=1, n_val=1, path=tmp_path, metrics=ScriptedMetric([0.1, 0.2, 0.3, 0.25, 0.4, 0.35], 'accuracy'))
    learn.model.ballast = nn.Parameter(torch.zeros(6_250_000), requires_grad=False)  # 25 MB: writes outlast epochs
    with learn.no_bar(), learn.no_logging():
        learn.fit(6, lr=1e-2, cbs=[SaveModelCallback(monitor='accuracy', async_save=async_save), WandbCallback(log_model='all', log_preds=False)])
    assert [a['metadata']['epoch'] for a in _models(_logged(offline_run))] == [0, 1, 2, 4]  # each best, as with synchronous saves


def test_log_model_all_with_async_saves_uploads_every_checkpoint(tmp_path, offline_run):
    learn = synth_learner(n_trn=1, n_val=1, path=tmp_path, metrics=ScriptedMetric([0.1, 0.2, 0.3, 0.4, 0.5], 'accuracy'))
    learn.model.ballast = nn.Parameter(torch.zeros(12_500_000), requires_grad=False)  # 50 MB: writes outlast epochs
    keep = KeepWeights()
    with learn.no_bar(), learn.no_logging():
        learn.fit(5, lr=1e-2, cbs=[SaveModelCallback(monitor='accuracy', every_epoch=True, async_save=True),
                                   WandbCallback(log_model='all', log_preds=False), keep])
    uploaded = sorted(a['metadata']['epoch'] for a in _models(_logged(offline_run)))
    assert uploaded == [0, 1, 2, 3, 4]
    for e in range(5): assert torch.equal(load_checkpoint(tmp_path / 'models' / f'model_{e}.pth')[0]['a'], keep.weights[e]['a'])


class SparseNet(nn.Module):
    "100 MB of weights behind a cheap forward and backward (a sparse gradient): the next batch comes long before a copy of them would end"
    def __init__(self):
        super().__init__()
        self.emb, self.bn = nn.Embedding(25_000_000, 1, sparse=True), nn.BatchNorm1d(1)
    def forward(self, x): return self.bn(x.view(-1, 1)).view(-1) * self.emb(torch.zeros(len(x), dtype=torch.long))[:, 0]


def _every_epochs_checkpoint(folder, async_save, model=SparseNet):
    "Fit a `model()` 4 epochs from a fixed seed, with only fastai's callbacks besides the tracker, saving every epoch; the checkpoints"
    from fastai.torch_core import set_seed
    set_seed(0)
    learn = synth_learner(n_trn=2, path=folder, metrics=ScriptedMetric([0.1, 0.2, 0.3, 0.4], 'accuracy'))
    learn.model = model()
    cb = SaveModelCallback(monitor='accuracy', every_epoch=True, async_save=async_save)
    with learn.no_bar(), learn.no_logging(): learn.fit(4, lr=1e-3, wd=0.1, cbs=cb)  # weight decay changes every weight at each step
    return [load_checkpoint(folder / 'models' / f'model_{e}.pth')[0] for e in range(4)]


@pytest.mark.parametrize('async_save', [True])
def test_each_epochs_checkpoint_equals_the_same_fit_saved_synchronously(tmp_path, async_save):
    # Same seed, same weights at each epoch's end. A copy of the state for the writer that let the next batch start
    # before it ended (as copying beside the loop on the CPU did, in a version tried and removed) would fail this
    expected = _every_epochs_checkpoint(tmp_path / 'sync', False)
    assert not any(torch.equal(a['emb.weight'], b['emb.weight']) for a, b in zip(expected, expected[1:]))  # each epoch's differ
    for got, want in zip(_every_epochs_checkpoint(tmp_path / 'overlap', async_save), expected): assert_same_weights(got, want)


class ClampingNet(SparseNet):
    "Keeps its weights within bounds in its forward pass, in place through `.data` (as some weight constraints are written), unseen by PyTorch's version counters"
    def __init__(self):
        super().__init__()
        with torch.no_grad(): self.emb.weight.mul_(2.)  # some outside the bounds: the first forward pass clamps them
    def forward(self, x):
        self.emb.weight.data.clamp_(-0.5, 0.5)
        return super().forward(x)


@pytest.mark.parametrize('async_save', [True])
def test_a_model_that_changes_its_weights_in_forward_gets_its_epochs_weights(tmp_path, async_save):
    expected = _every_epochs_checkpoint(tmp_path / 'sync', False, ClampingNet)
    for got, want in zip(_every_epochs_checkpoint(tmp_path / 'async', async_save, ClampingNet), expected): assert_same_weights(got, want)


class SparseState(nn.Module):
    "A sparse embedding (SGD's momentum for it is sparse too) and a sparse buffer: tensors without one storage"
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 1, sparse=True)
        self.register_buffer('adjacency', torch.eye(3).to_sparse())
    def forward(self, x): return x.view(-1) * self.emb(torch.zeros(len(x), dtype=torch.long))[:, 0]


@pytest.mark.parametrize('async_save', [False, True])
def test_sparse_tensors_in_the_state_are_saved(tmp_path, async_save):
    learn = synth_learner(n_trn=2, path=tmp_path)
    learn.model = SparseState()
    cb = SaveModelCallback(every_epoch=True, with_opt=True, async_save=async_save)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, lr=1e-3, cbs=cb)
    state, desc = load_checkpoint(tmp_path / 'models' / 'model_1.pth')
    assert desc['metadata']['epoch'] == 1
    assert torch.equal(state['model']['adjacency'].to_dense(), torch.eye(3))
    assert torch.equal(state['model']['emb.weight'], learn.model.emb.weight.detach())


@pytest.mark.parametrize('async_save', [True])
def test_weights_changed_right_after_the_fit_never_reach_its_at_end_checkpoint(tmp_path, async_save):
    learn = synth_learner(n_trn=2, path=tmp_path)
    learn.model = SparseNet()
    with learn.no_bar(), learn.no_logging(): learn.fit(2, lr=1e-3, cbs=SaveModelCallback(at_end=True, async_save=async_save))
    with torch.no_grad(): learn.model.emb.weight.mul_(2.)  # at once, as a script's next line may (doubling is exact)
    state, desc = load_checkpoint(tmp_path / 'models' / 'model.pth')
    assert desc['reason'] == 'end'
    assert torch.equal(state['emb.weight'], learn.model.emb.weight / 2)


@pytest.mark.parametrize('async_save', [True])
def test_background_saves_combine_with_fine_tune_get_preds_and_a_second_fit(tmp_path, async_save):
    from fastai_bestmodel.test_utils import digits_learner
    learn = digits_learner(path=tmp_path)
    keep, cb = KeepAll(), SaveModelCallback(monitor='accuracy', async_save=async_save, save_last=True)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(2, 1e-2, freeze_epochs=1, cbs=[cb, keep])
        preds = learn.get_preds()[0]
        best = cb.best_epoch
        learn.fit(1, 1e-4, cbs=[SaveModelCallback(monitor='accuracy', fname='second', async_save=async_save), KeepAll()])
    assert preds.shape[0] == len(learn.dls.valid_ds)
    state, desc = load_checkpoint(tmp_path / 'models' / 'model.pth')
    assert desc['metadata']['epoch'] == best
    assert_same_weights(state, keep.weights[best])
    assert load_checkpoint(tmp_path / 'models' / 'model_last.pth')[1]['metadata']['epoch'] == 2
    assert read_checkpoint(tmp_path / 'models' / 'second.pth')['metadata']['epoch'] == 0


class SlowDisk(Callback):
    "From the last epoch's validation, holds the model folder's lock for `secs`, so that the last save's write waits, as on a slow disk"
    def __init__(self, tracker, secs): self.tracker, self.secs = tracker, secs
    def before_validate(self):
        if self.epoch < self.n_epoch - 1: return
        import threading, time
        from fastai_bestmodel.durable import FolderLock
        self.tracker.wait()
        took = threading.Event()
        def hold():
            with FolderLock(self.path / self.model_dir): took.set(); time.sleep(self.secs)
        threading.Thread(target=hold).start(); took.wait()


def test_a_fit_with_async_saves_returns_with_its_last_write_on_disk(tmp_path):
    from fastai_bestmodel.checkpoint import list_checkpoints  # the format's reader, which waits for nothing
    learn = synth_learner(n_trn=2, path=tmp_path, metrics=ScriptedMetric([0.1, 0.2, 0.3], 'accuracy'))
    cb = SaveModelCallback(monitor='accuracy', async_save=True, save_top_k=3)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-2, cbs=[cb, SlowDisk(cb, 1.5)])
    assert len(list_checkpoints(tmp_path / 'models')) == 3  # the third, held 1.5 s by the slow disk, is there


def test_a_script_ending_after_an_async_fit_leaves_the_checkpoint(tmp_path):
    script = tmp_path / 'ends.py'
    script.write_text(f"""import sys; sys.path.insert(0, {str(HERE)!r})
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from test_combinations import SlowDisk
learn = synth_learner(n_trn=2, path={str(tmp_path)!r}, metrics=ScriptedMetric([0.1, 0.2, 0.3], 'accuracy'))
cb = SaveModelCallback(monitor='accuracy', async_save=True)
with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-2, cbs=[cb, SlowDisk(cb, 1.5)])
print('fit returned', flush=True)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=python_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == 'fit returned'  # nothing left to wait for at exit
    assert load_checkpoint(tmp_path / 'models' / 'model.pth')[1]['metadata']['epoch'] == 2  # complete, digest checked
