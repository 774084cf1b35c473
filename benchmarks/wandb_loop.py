"""8. What logging checkpoints to W&B costs the training loop: the time `WandbCallback`'s events take, per checkpoint,
as a ratio to a plain `torch.save` of the same state measured in the same run.

Run: `python benchmarks/wandb_loop.py [--reps 5] [--epochs 4]` (W&B offline: no account or network).

Each fit saves a new best every epoch (a scripted metric), with fastai_bestmodel's `SaveModelCallback` (synchronous)
and `WandbCallback`. The loop's cost of W&B is the time spent in `WandbCallback`'s events with `log_model='all'` (or
`'end'`) minus the same with `log_model=False` (fastai's own logging of the epoch's values, identical in both), divided
by the checkpoints logged. Fits of each kind are interleaved (ABBA); each repetition's ratio pairs it with the plain
saves measured in that repetition, and the median and range of those ratios are printed. Thresholds, set before
measuring (issue 23): 'all' blocks at most 0.10 of a plain save per checkpoint; 'end' adds nothing measurable per
epoch."""
import argparse, contextlib, gc, io, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('WANDB_SILENT', 'true')
import torch, wandb
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _Big, _learner, PlainSave, _time_events
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.wandb import WandbCallback

EVENTS = ('before_fit', 'before_train', 'after_train', 'after_epoch', 'after_fit')


def one_fit(kind, root, epochs, layers, width)->dict:
    "Seconds spent per event by the callback measured in one fit of `kind`: 'plain', or a `log_model` of W&B's"
    tmp = Path(tempfile.mkdtemp(dir=root))  # a folder of its own, deleted after: each fit's checkpoints are 201 MB
    learn = _learner(tmp, epochs, True, layers, width)
    if kind == 'plain': cbs = [_time_events(PlainSave(tmp/'plain.pth'), ['after_epoch'])]
    else:
        run = wandb.init(project='bench-wandb-loop', dir=tmp, mode='offline')
        wb = _time_events(WandbCallback(log_model={'off': False, 'all': 'all', 'end': 'end'}[kind], log_preds=False),
                          EVENTS)
        cbs = [SaveModelCallback(monitor='score', comp='max'), wb]
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()): learn.fit(epochs, lr=1e-3, cbs=cbs)
    if kind != 'plain': run.finish()
    spent = cbs[-1].spent
    del learn, cbs; gc.collect()
    shutil.rmtree(tmp, ignore_errors=True)
    return spent


def main(reps=5, epochs=4, layers=3, width=4096):
    tmp = Path(tempfile.mkdtemp())
    n = sum(p.numel() for p in _Big(layers, width).parameters())
    print(f'8. W&B logging in the loop: {n/1e6:.1f} M parameters ({n*4/1e6:.0f} MB), {epochs} epochs a fit, each a new '
          f'best; {reps} repetitions of each kind, interleaved; cpu ({os.cpu_count()} cores), torch {torch.__version__}, '
          f'wandb {wandb.__version__}')
    kinds = ['plain', 'off', 'all', 'end']
    res = {k: [] for k in kinds}
    for r in range(reps):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]): res[kind].append(one_fit(kind, tmp, epochs, layers, width))
    plain = [statistics.median(s['after_epoch'][1:]) for s in res['plain']]  # the first save of a fit makes the file
    def total(s, events=EVENTS): return sum(sum(s[e]) for e in events)
    per_epoch = ('before_train', 'after_train', 'after_epoch')
    def extra(kind, events, per=1): return [(total(k, events) - total(o, events)) / per for k, o in zip(res[kind], res['off'])]
    rows = {"'all': blocking per checkpoint, during the fit": extra('all', per_epoch, epochs),
            "'all': at the end of fit (the last checkpoint's upload, and the W&B calls of the end)": extra('all', ['after_fit']),
            "'end': blocking per epoch": extra('end', per_epoch, epochs),
            "'end': at the end of fit (one upload)": extra('end', ['after_fit'])}
    print(f'   a plain torch.save of the state: {statistics.median(plain)*1000:.0f} ms (median; '
          f'{min(plain)*1000:.0f} to {max(plain)*1000:.0f} over repetitions)')
    for label, secs in rows.items():
        ratios = [s / p for s, p in zip(secs, plain)]
        print(f'   {label}: {statistics.median(secs)*1000:.1f} ms, {statistics.median(ratios):.3f} x a plain save '
              f'(per repetition {min(ratios):.3f} to {max(ratios):.3f})')
    print("   targets: 'all' <= 0.10 x a plain save per checkpoint; 'end' per epoch ~0; at the end, one upload's hashing")
    return res


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--layers', type=int, default=3)
    p.add_argument('--width', type=int, default=4096)
    a = p.parse_args()
    main(a.reps, a.epochs, a.layers, a.width)
