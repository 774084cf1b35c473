"""Checks on a GPU (or the CPU, where there is none): a tracker's checkpoints hold the best epoch's weights when the
model and the optimizer live on the device, in fp32 and in mixed precision (`to_fp16`), saved synchronously and
asynchronously (pinned buffers, a copy from the device); the best loads back onto the device; a run resumed from
`model_last` continues as the uninterrupted one did. Prints one line per check and exits 1 if any failed.

Run: `python benchmarks/gpu_check.py`."""
import contextlib, io, json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from fastai.callback.core import Callback
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.learner import load_best_model
from fastai_bestmodel.resume import resume_training
from fastai_bestmodel.checkpoint import read_checkpoint
from fastai_bestmodel.writer import wait_for_saves
from fastai_bestmodel.test_utils import digits_learner, KeepWeights, ScriptedMetric

failed = []
def check(name, ok, detail=''):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail) if detail else ''}", flush=True)
    if not ok: failed.append(name)

def same(a, b): return all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a) and set(a) == set(b)


dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print(f"device: {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}, torch {torch.__version__}", flush=True)
root = Path(tempfile.mkdtemp())
for precision in ('fp32', 'fp16'):
    for kind in ('sync', 'async'):
        d = root/f'{precision}-{kind}'
        learn = digits_learner(path=d)
        if precision == 'fp16': learn = learn.to_fp16()
        keep = KeepWeights()
        t0 = time.perf_counter()
        with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
            learn.fit_one_cycle(5, 3e-2, cbs=[SaveModelCallback(monitor='accuracy', save_last=True, with_opt=True, async_save=kind == 'async'), keep])
        took = time.perf_counter() - t0
        rows = learn.recorder.values
        best = max(range(len(rows)), key=lambda i: (rows[i][2], -i))
        desc = read_checkpoint(d/'models'/'model.json')
        name = f'{precision} {kind}'
        check(f'{name}: the model is on {dev}', next(learn.model.parameters()).device.type == dev)
        check(f'{name}: the best epoch is the recorder\'s', desc['metadata']['epoch'] == best, f"{desc['metadata']['epoch']} vs {best}")
        check(f'{name}: .json metadata are that epoch\'s row', desc['metadata']['accuracy'] == float(rows[best][2]))
        saved = torch.load(d/'models'/'model.pth', weights_only=True)['model']
        check(f'{name}: model.pth holds that epoch\'s weights', same(saved, keep.weights[best]))
        check(f'{name}: model_last.pth holds the last epoch\'s', same(torch.load(d/'models'/'model_last.pth', weights_only=True)['model'], keep.weights[-1]))
        check(f'{name}: the learner holds the best after fit', same(learn.model.state_dict(), keep.weights[best]))
        other = digits_learner(path=d)
        load_best_model(other, 'model')  # into a model not yet on the device (fastai moves it when a fit starts)
        check(f'{name}: load_best_model loads it', same(other.model.state_dict(), keep.weights[best]))
        other.model.to(dev); load_best_model(other, 'model')
        check(f'{name}: load_best_model into a model on {dev}', next(other.model.parameters()).device.type == dev and same(other.model.state_dict(), keep.weights[best]))
        print(f'     ({took:.1f} s for 5 epochs)', flush=True)

# A callback that changes the weights between epochs, after the save (through `.data`, a kernel queued on the training
# stream): with the copy to pinned buffers on a side stream, the change must wait for the copy; each checkpoint holds
# the weights of the epoch its .json names
class Perturb(Callback):
    order = KeepWeights.order + 1
    def after_epoch(self):
        for p in self.model.parameters(): p.data.add_(0.5)
for kind in ('sync', True, 'background'):
    d = root/f'perturb-{kind}'
    learn, keep = digits_learner(path=d), KeepWeights()
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
        learn.fit_one_cycle(4, 3e-2, cbs=[SaveModelCallback(monitor='accuracy', every_epoch=True, async_save=kind != 'sync' and kind), keep, Perturb()])
    wait_for_saves()
    got = [read_checkpoint(d/'models'/f'model_{e}.pth')['metadata']['epoch'] == e and
           same(torch.load(d/'models'/f'model_{e}.pth', weights_only=True), keep.weights[e]) for e in range(4)]
    check(f'weights changed between epochs, async_save={kind!r}: each of 4 checkpoints holds its epoch\'s weights', all(got), got)

# The learner holds the best without loading it back when the last epoch was the best; with 'background' the fit returns
# before that write ends, and the file, read once `wait_for_saves` returns, holds those weights
for kind in (True, 'background'):
    d = root/f'holds-{kind}'
    learn, keep = digits_learner(path=d), KeepWeights()
    learn.metrics = [ScriptedMetric([0.1, 0.2, 0.3], 'score')]
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
        learn.fit_one_cycle(3, 3e-2, cbs=[SaveModelCallback(monitor='score', async_save=kind), keep])
    wait_for_saves()
    check(f'async_save={kind!r}, best last: the learner holds it, as does model.pth',
          same(learn.model.state_dict(), keep.weights[2]) and same(torch.load(d/'models'/'model.pth', weights_only=True), keep.weights[2]))

# Exact resume on the device: 4 epochs uninterrupted vs 2, then a new learner resumed from model_last for the rest
class StopAt(Callback):
    order = 70
    def after_epoch(self):
        if self.epoch == 1: raise KeyboardInterrupt()
full = digits_learner(path=root/'full')
with full.no_bar(), contextlib.redirect_stdout(io.StringIO()): full.fit_one_cycle(4, 3e-2, cbs=SaveModelCallback(with_opt=True, save_last=True))
part = digits_learner(path=root/'part')
with part.no_bar(), contextlib.redirect_stdout(io.StringIO()):
    try: part.fit_one_cycle(4, 3e-2, cbs=[SaveModelCallback(with_opt=True, save_last=True), StopAt()])
    except KeyboardInterrupt: pass
resumed = digits_learner(path=root/'part')  # a new process would build it so; then scramble every generator
torch.manual_seed(7); torch.cuda.manual_seed_all(7) if dev == 'cuda' else None
start = resume_training(resumed, 'model_last')
with resumed.no_bar(), contextlib.redirect_stdout(io.StringIO()): resumed.fit_one_cycle(4, 3e-2, start_epoch=start, cbs=SaveModelCallback(with_opt=True, save_last=True, resume=True))
diff = max(abs(a - b) for ra, rb in zip(full.recorder.values[2:], resumed.recorder.values[2:]) for a, b in zip(ra[:2], rb[:2]))
check(f'resume on {dev}: start epoch 2', start == 2, start)
check(f'resume on {dev}: epochs 2-3 losses as uninterrupted (largest difference {diff:.2e}; GPU kernels may differ in the last bits)', diff < 1e-3, diff)
print(json.dumps(dict(device=dev, failed=failed)))
sys.exit(1 if failed else 0)
