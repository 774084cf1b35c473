"""A training process for `test_seams.py`: one run of a job that is killed, then resumed.

`killed <folder>`: trains 11 epochs keeping the 3 best and the last, with the optimizer state; when the writer is
about to write (or link) `model_last.pth` for epoch 8 (after epoch 8's best was written), the process SIGKILLs
itself.
`resumed <folder>`: a new process: `resume_training` from `model_last`, then the rest of the 11 epochs with
`resume=True`; prints, as its last line, the epoch it started at and the tracker's `best_k_models`, best first."""
import json, os, signal, sys
from pathlib import Path
from fastai.test_utils import synth_learner
import fastai_bestmodel.writer as writer
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.resume import resume_training
from fastai_bestmodel.test_utils import ScriptedMetric

mode, path = sys.argv[1], Path(sys.argv[2])
# Higher is better: rising to epoch 8's 0.90, then 0.86 and 0.88, so that the 3 best are epochs 8, 10, 9
SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.90, 0.86, 0.88]


def tracker(**kw): return SaveModelCallback(monitor='score', save_top_k=3, save_last=True, with_opt=True, **kw)


learn = synth_learner(n_trn=2, path=path, metrics=ScriptedMetric(SCORES, 'score'))
if mode == 'killed':
    real = writer.save_checkpoint
    def save_or_die(p, state, metadata, **kwargs):
        if Path(p).name == 'model_last.pth' and metadata['epoch'] == 8: os.kill(os.getpid(), signal.SIGKILL)
        return real(p, state, metadata, **kwargs)
    writer.save_checkpoint = save_or_die  # the name `_write_job` calls
    # `model_last` of an epoch that saved a best is a link to that checkpoint (no second write): die there too
    real_link = writer.link_checkpoint
    def link_or_die(src, p, **kwargs):
        epoch = (kwargs.get('desc') or {}).get('metadata', {}).get('epoch')
        if Path(p).name == 'model_last.pth' and epoch == 8: os.kill(os.getpid(), signal.SIGKILL)
        return real_link(src, p, **kwargs)
    writer.link_checkpoint = link_or_die
    with learn.no_bar(), learn.no_logging(): learn.fit(len(SCORES), lr=1e-2, cbs=tracker())
elif mode == 'resumed':
    start = resume_training(learn)
    cb = tracker(resume=True)
    with learn.no_bar(), learn.no_logging(): learn.fit(len(SCORES), lr=1e-2, start_epoch=start, cbs=cb)
    print(json.dumps(dict(start=start, best_k_models=[[Path(p).name, v] for p, v in cb.best_k_models.items()])))
