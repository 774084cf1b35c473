"""One training run in its own process, for the resume tests: `resume_child.py <folder> <json options>`.

Options: `scores` (the scripted accuracy of each epoch), and SaveModelCallback's `resume`, `save_top_k`, `filename`.
Each epoch's weights are filled with `100 * run + epoch`, so a file's weights tell which run and epoch wrote them."""
import json, sys, warnings, torch
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric

folder, opts = sys.argv[1], json.loads(sys.argv[2])
run = opts.pop('run')
scores = opts.pop('scores')

class Fill(Callback):
    order = 55  # before the tracker
    def after_epoch(self):
        with torch.no_grad():
            for p in self.model.parameters(): p.fill_(100. * run + self.epoch)

learn = synth_learner(n_trn=1, path=folder, metrics=ScriptedMetric(scores, 'accuracy'))
cb = SaveModelCallback(monitor='accuracy', **opts)
with warnings.catch_warnings(record=True) as ws, learn.no_bar(), learn.no_logging():
    warnings.simplefilter('always')
    learn.fit(len(scores), lr=1e-3, cbs=[Fill(), cb])
print(json.dumps(dict(warnings=[str(w.message) for w in ws], best=cb.best, best_epoch=cb.best_epoch,
                      holds=learn.model.a.item(), kept={p.name: v for p, v in cb.best_k_models.items()})))
