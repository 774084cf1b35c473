"""One process of the exact-resume test: `exact_resume_child.py <folder> full|killed|resumed <out.json> [wandb run id]`.

`full` trains 6 epochs of `fit_one_cycle`; `killed` trains the same run and is SIGKILLed right after epoch 2's
checkpoints are written; `resumed` builds the learner anew in a new process, scrambles every random generator, then
`resume_training` from `model_last` and `fit_one_cycle(6, start_epoch=...)`. The model has dropout and the training set
is shuffled, so the per-epoch losses depend on the random states being put back exactly."""
import json, os, random, signal, sys
import numpy as np, torch
from torch import nn
import torch.nn.functional as F
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.resume import resume_training

folder, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
run_id = sys.argv[4] if len(sys.argv) > 4 else None  # log to this W&B run (offline), resuming it in `resumed`
EPOCHS, KILL_AFTER = 6, 2
torch.set_num_threads(1)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
    def forward(self, x): return F.dropout(x, 0.3, self.training) * self.a + self.b


class Rows(Callback):
    "The recorder's row of each epoch that trained (fastai's `start_epoch` skips the others), and SIGKILL on cue"
    order = 70
    def before_fit(self): self.rows, self.trained = {}, False
    def before_train(self): self.trained = True
    def after_epoch(self):
        if self.trained: self.rows[self.epoch] = [float(v) for v in self.recorder.values[-1]]
        self.trained = False
        if mode == 'killed' and self.epoch == KILL_AFTER: os.kill(os.getpid(), signal.SIGKILL)


random.seed(0); np.random.seed(0); torch.manual_seed(0)
learn = synth_learner(n_trn=5, path=folder, model=Noisy())
rows, start = Rows(), 0
if mode == 'resumed':
    random.seed(123); np.random.seed(123); torch.manual_seed(123)  # a new process: nothing left of the run's random states
    learn.model = Noisy()
    start = resume_training(learn, 'model_last')
cb = SaveModelCallback(with_opt=True, save_last=True, resume=mode == 'resumed')
cbs = [cb, rows]
if run_id:
    import wandb
    from fastai_bestmodel.wandb import WandbCallback
    run = wandb.init(project='resume', id=run_id, resume='allow', mode='offline', dir=folder)
    cbs.append(WandbCallback(log_model=True, log_preds=False))
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(EPOCHS, 1e-2, start_epoch=start, cbs=cbs + [EarlyStoppingCallback(patience=10)])  # as users combine it
if run_id: run.finish()
best = {k: v.tolist() for k, v in learn.model.state_dict().items()}
json.dump(dict(rows=rows.rows, start=start, best_epoch=cb.best_epoch, best=best), open(out, 'w'))
