"""A training process for the policy tests, killed or interrupted by the parent.

`interrupt <folder>`: trains with `save_on_exception=True`; in the third batch of the second epoch it touches `ready`
and waits to be sent SIGTERM or SIGINT, then writes what it saw to `seen.json` and lets the exception go on.
`sigterm-write <folder>`: trains without `save_on_exception`; while the first checkpoint's weights are being written it
touches `ready` and waits to be sent SIGTERM.
`topk-kill <folder> <n>`: keeps the 2 best of scores 0.5, 0.6, 0.7, each epoch's weights filled with its epoch number;
in the third epoch's save (a new best: the old best moves aside, the new one is written, the worst is deleted) it is
killed with SIGKILL right after the n-th step made durable (an fsync of the folder)."""
import json, os, signal, sys, time, torch
from pathlib import Path
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback
import fastai_bestmodel.checkpoint as ckpt, fastai_bestmodel.durable as durable
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric

mode, path = sys.argv[1], Path(sys.argv[2])


class WaitForSignal(Callback):
    def after_batch(self):
        if self.training and self.epoch == 1 and self.iter == 2:
            (path / 'ready').touch()
            while True: time.sleep(0.01)  # the signal arrives here


class Fill(Callback):
    "Set every weight to the epoch number, before the tracker (order 61) saves them; arm the kill in the third epoch"
    order = 55
    def after_epoch(self):
        with torch.no_grad():
            for p in self.model.parameters(): p.fill_(float(self.epoch))
        if self.epoch == 2: arm()


calls = 0
def arm():
    real = durable.fsync_dir
    def fsync_then_maybe_die(folder):
        global calls
        real(folder)
        calls += 1
        if calls == int(sys.argv[3]): os.kill(os.getpid(), signal.SIGKILL)
    durable.fsync_dir = ckpt.fsync_dir = fsync_then_maybe_die  # `durable` calls its own; `checkpoint` its imported name


if mode == 'interrupt':
    learn = synth_learner(n_trn=5, path=path)
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fit(3, lr=1e-2, cbs=[SaveModelCallback(save_on_exception=True), WaitForSignal()])
    except BaseException as e:
        (path / 'seen.json').write_text(json.dumps(dict(exception=type(e).__name__, code=getattr(e, 'code', None),
                                                        sigterm_default=signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                                                        weights=learn.model.a.item())))
        raise
elif mode == 'topk-kill':
    learn = synth_learner(n_trn=1, path=path, metrics=ScriptedMetric([0.5, 0.6, 0.7], 'score'))
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, lr=1e-3, cbs=[Fill(), SaveModelCallback(monitor='score', save_top_k=2, filename='m-{epoch}')])
    (path / 'finished').touch()
elif mode == 'sigterm-write':
    real_write = durable._DigestingFile.write
    def write_and_wait(self, b):
        if not (path / 'ready').exists():
            (path / 'ready').touch()
            while True: time.sleep(0.01)  # the signal arrives here, mid-write
        return real_write(self, b)
    durable._DigestingFile.write = write_and_wait
    learn = synth_learner(n_trn=2, path=path)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, lr=1e-2, cbs=SaveModelCallback())
