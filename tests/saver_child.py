"""A training process that saves a new best checkpoint every epoch, for ever, until it is killed.

Each epoch's weights are filled with the epoch number before the tracker saves them, so a checkpoint's weights and its
`.json` can be checked against each other after a kill. A large unused parameter makes each save take far longer than
each epoch's training, so that most kills land during a save."""
import sys, torch
from pathlib import Path
from torch import nn
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric

path, async_save = sys.argv[1], sys.argv[2] == 'async'

class Fill(Callback):
    "Set every weight to the epoch number, before the tracker (order 61) saves them"
    order = 55
    def after_epoch(self):
        with torch.no_grad():
            for p in self.model.parameters(): p.fill_(float(self.epoch))
        if self.epoch == 1: Path(path, 'ready').touch()  # the first save is on disk

learn = synth_learner(n_trn=1, n_val=1, path=path, metrics=ScriptedMetric(range(100_000), 'score'))
learn.model.ballast = nn.Parameter(torch.zeros(8_000_000), requires_grad=False)  # 32 MB
with learn.no_bar(), learn.no_logging():
    learn.fit(100_000, lr=1e-3, cbs=[Fill(), SaveModelCallback(monitor='score', async_save=async_save)])
