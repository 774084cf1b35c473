"""Benchmarks of fastai_bestmodel against baselines measured in the same run. Run: `python benchmarks/bench.py`.

Every figure is printed as a ratio to its baseline, medians over several repetitions, with baseline and ours
interleaved so that both see the same disk and page-cache conditions."""
import argparse, contextlib, gc, io, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback as FastaiSaveModelCallback
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_fit import bench_whole_fit  # figure 7

os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('WANDB_SILENT', 'true')


class _Big(nn.Module):
    "The synthetic regression model of fastai's tests, carrying `width`x`width` linear layers that make its state large"
    def __init__(self, layers, width):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.ballast = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        for p in self.ballast.parameters(): p.requires_grad_(False)
    def forward(self, x): return x * self.a + self.b


class PlainSave(Callback):
    "The naive baseline: `torch.save(model.state_dict(), path)` after every epoch"
    order = 61
    def __init__(self, path): self.path = path
    def after_epoch(self): torch.save(self.model.state_dict(), self.path)


class BareCopy(Callback):
    "The floor of an async save: copy the state into buffers allocated once, and nothing else"
    order = 61
    def after_epoch(self):
        sd = self.model.state_dict()
        if not hasattr(self, 'bufs'): self.bufs = {k: torch.empty_like(v) for k, v in sd.items()}
        for k, v in sd.items(): self.bufs[k].copy_(v)


def _time_events(cb, events=('before_fit', 'after_epoch', 'after_fit')):
    "Record the seconds each call of `cb`'s `events` takes, in `cb.spent[event]`"
    cb.spent = {name: [] for name in events}
    for name in events:
        orig = getattr(cb, name, None)
        if orig is None: continue  # a baseline without this event: nothing to time
        def timed(*args, _orig=orig, _name=name, **kwargs):
            t0 = time.perf_counter()
            try: return _orig(*args, **kwargs)
            finally: cb.spent[_name].append(time.perf_counter() - t0)
        setattr(cb, name, timed)
    return cb


def _learner(path, n_epochs, improving=True, layers=3, width=4096):
    scores = [i if improving else (1 if i == 0 else 0) for i in range(n_epochs)]
    learn = synth_learner(n_trn=1, n_val=1, path=path, metrics=ScriptedMetric(scores, 'score'))
    learn.model = _Big(layers, width)
    return learn


def _fit(learn, n, cbs):
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()): learn.fit(n, lr=1e-3, cbs=cbs)


class Pace(Callback):
    "Make each epoch last `seconds` more, in `after_train`, outside the timed save: training on an accelerator, where the CPU waits"
    def __init__(self, seconds): self.seconds = seconds
    def after_train(self): time.sleep(self.seconds)


def _interleaved(reps, kinds, one):
    "`{kind: [one(kind) results...]}` over `reps` rounds, alternating the order (ABBA) so a drift in speed hits all kinds alike"
    res = {k: [] for k in kinds}
    for r in range(reps):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]): res[kind] += one(kind)
    return res


def bench_blocking(reps, epochs, layers, width, pace=0.5):
    "1. Time a save blocks the loop, in a fit where every epoch improves"
    tmp = Path(tempfile.mkdtemp())
    n = sum(p.numel() for p in _Big(layers, width).parameters())
    print(f'1. blocking time per save, {n/1e6:.1f} M parameters ({n*4/1e6:.0f} MB), every epoch improving')
    meds = {}
    for label, seconds in ((f'epochs of {pace} s', pace), ('epochs back to back (a background write always in flight)', 0)):
        fits = {}  # kind: what each fit's saves blocked the loop in all, the end-of-fit wait for the last write included
        def one(kind):
            learn = _learner(tmp, epochs, True, layers, width)
            cb = (PlainSave(tmp / 'plain.pth') if kind == 'plain' else BareCopy() if kind == 'copy' else
                  SaveModelCallback(monitor='score', fname=kind, async_save=kind.startswith('async'),
                                    save_top_k=3 if kind.endswith('3') else 1))  # top 3: each save moves one, deletes one
            _fit(learn, epochs, [_time_events(cb, ['after_epoch', 'after_fit']), Pace(seconds)])
            fits.setdefault(kind, []).append(sum(cb.spent['after_epoch']) + sum(cb.spent['after_fit']))
            del learn; gc.collect()
            return cb.spent['after_epoch'][1:]  # the first save of each fit allocates (async buffers, a new file)
        res = _interleaved(reps, ['plain', 'sync', 'async', 'sync3', 'async3', 'copy'], one)
        med = meds[label] = {k: statistics.median(v) for k, v in res.items()}
        print(f'   {label}, {len(res["plain"])} saves each: plain torch.save {med["plain"]*1000:.1f} ms; '
              f'ours sync {med["sync"]*1000:.1f} ms; ours async {med["async"]*1000:.1f} ms')
        print(f'     ratio sync / plain: {med["sync"]/med["plain"]:.2f} (target <= 1.00); async / plain: {med["async"]/med["plain"]:.2f} (target <= 0.10)')
        pair = [a / b for a, b in zip(res['async'], res['sync'])]
        pair3 = [a / b for a, b in zip(res['async3'], res['sync3'])]
        print(f'     top 3: sync {med["sync3"]*1000:.1f} ms, async {med["async3"]*1000:.1f} ms; async / sync, paired saves: '
              f'top 1 {statistics.median(pair):.2f} ({min(pair):.2f} to {max(pair):.2f}), top 3 {statistics.median(pair3):.2f} '
              f'({min(pair3):.2f} to {max(pair3):.2f}) (target <= 1.00)')
        by_fit = {k: [a / b for a, b in zip(fits[f'async{k}'], fits[f'sync{k}'])] for k in ('', '3')}
        print(f'     async / sync, each fit\'s saves in all (the end-of-fit wait included), paired by repetition: '
              + ', '.join(f'top {k or 1} {statistics.median(v):.2f} ({min(v):.2f} to {max(v):.2f})' for k, v in by_fit.items())
              + ' (target <= 1.00)')
        print(f'     the floor of async, a bare copy of the state into reused buffers: {med["copy"]*1000:.1f} ms, '
              f'{med["copy"]/med["plain"]:.2f} of plain; async / bare copy: {med["async"]/med["copy"]:.2f}')
    return meds


def bench_tracking(reps, epochs):
    "2. A digits fit whose monitor stops improving after the first epoch: ours vs fastai's SaveModelCallback"
    from fastai_bestmodel.test_utils import digits_learner
    def one(kind):
        learn = digits_learner(path=tempfile.mkdtemp(), metrics=ScriptedMetric([1] + [0] * (epochs - 1), 'score'))
        cb = _time_events(FastaiSaveModelCallback(monitor='score') if kind == 'fastai' else SaveModelCallback(monitor='score'))
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()): learn.fit(epochs, 1e-2, cbs=[cb])
        return [(time.perf_counter() - t0, sum(map(sum, cb.spent.values())))]
    res = _interleaved(reps, ['fastai', 'ours'], one)
    fit = {k: statistics.median(t for t, _ in v) for k, v in res.items()}
    spent = {k: statistics.median(c for _, c in v) for k, v in res.items()}
    # The fits' own times vary by more than the trackers cost, so the ratio also comes from the time spent in each
    # tracker's events (the only code that differs), over the fastai fit's median
    est = (fit['fastai'] - spent['fastai'] + spent['ours']) / fit['fastai']
    print(f'2. tracking overhead: digits, {epochs} epochs, improving only at epoch 0, {reps} runs each')
    print(f'   time in the tracker per fit: fastai {spent["fastai"]*1000:.1f} ms, ours {spent["ours"]*1000:.1f} ms; '
          f'ratio of fits from that: {est:.4f} (target <= 1.02)')
    print(f'   whole fits (noisier): fastai {fit["fastai"]:.3f} s, ours {fit["ours"]:.3f} s, ratio {fit["ours"]/fit["fastai"]:.3f}')
    return fit, spent


def bench_digits(reps, epochs):
    "3. A full digits fit with W&B offline logging of the best model vs fastai's SaveModelCallback without W&B"
    import wandb
    from fastai_bestmodel.test_utils import digits_learner
    from fastai_bestmodel.wandb import WandbCallback
    def one(kind):
        tmp = Path(tempfile.mkdtemp())
        learn = digits_learner(path=tmp)
        t0 = time.perf_counter()
        if kind.startswith('fastai'): cbs = [FastaiSaveModelCallback(monitor='accuracy')]
        else:
            run = wandb.init(project='fastai-bestmodel-bench', mode='offline', dir=tmp)
            cbs = [SaveModelCallback(monitor='accuracy'), WandbCallback(log_model=True, log_preds=False)]
        with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()): learn.fit_one_cycle(epochs, 3e-2, cbs=cbs)
        if not kind.startswith('fastai'): run.finish()
        return [time.perf_counter() - t0]
    res = _interleaved(reps, ['fastai, no W&B', 'ours + W&B offline'], one)
    med = {k: statistics.median(v) for k, v in res.items()}
    a, b = med['fastai, no W&B'], med['ours + W&B offline']
    print(f'3. digits, {epochs} epochs, median of {reps} (ours includes wandb.init and finish)')
    print(f'   fastai SaveModelCallback, no W&B: {a:.2f} s; ours with W&B offline: {b:.2f} s; ratio: {b/a:.2f}')
    return med


_PEAK = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from benchmarks.bench import _learner, _fit, Pace
from fastai_bestmodel.tracker import SaveModelCallback
learn = _learner({tmp!r}, 5, True, {layers}, {width})
rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20
before = rss()
_fit(learn, 5, [SaveModelCallback(monitor='score', fname={kind!r}, async_save={kind!r} == 'async', load_best={load_best}), Pace(0.3)])
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_memory(layers, width):
    "4. Peak resident memory of a fit with async saves vs sync saves, each in its own process"
    tmp = tempfile.mkdtemp()
    peak = {}
    # The saves alone (`load_best=False`), then what loading the best at the end adds
    for kind, load_best in (('sync', False), ('async', False), ('sync', True)):
        code = _PEAK.format(root=str(Path(__file__).resolve().parent.parent), tmp=tmp, layers=layers, width=width, kind=kind, load_best=load_best)
        runs = [subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True) for _ in range(3)]
        runs = sorted([float(v) for v in r.stdout.strip().splitlines()[-1].split()] for r in runs)
        peak[kind, load_best] = sorted(runs, key=lambda r: r[1])[1]  # the median peak of 3 processes
    size = sum(p.numel() for p in _Big(layers, width).parameters()) * 4 / 2**20
    (sb, sp), (ab, ap), (lb, lp) = peak['sync', False], peak['async', False], peak['sync', True]
    print(f'4. peak resident memory, model state {size:.0f} MiB, 5 epochs of 0.3 s each improving, median of 3 processes:')
    print(f'   saves only (load_best=False): sync peak {sp:.0f} MiB ({sp-sb:+.0f} MiB over the {sb:.0f} MiB before the fit); '
          f'async peak {ap:.0f} MiB ({ap-ab:+.0f} MiB over {ab:.0f} MiB); ratio of peaks async / sync: {ap/sp:.2f}')
    print(f'   async peak - sync peak = {(ap-sp)/size:.1f} times the state: snapshot buffers allocated once and reused, one copy of '
          f'the state ({size:.0f} MiB): at most one (AsyncCheckpointWriter(buffers=1), the default); a save that comes while '
          f'one is being written waits for it')
    print(f'   loading the best at the end (load_best=True, sync): peak {lp:.0f} MiB ({lp-lb:+.0f} MiB): the checkpoint, '
          f'memory-mapped while load_state_dict copies it, counts as resident')
    return peak


def bench_files(epochs):
    "5. Files and bytes in the model folder, and W&B model artifact versions, after a fit where every epoch improves"
    import wandb
    from fastai.callback.wandb import WandbCallback as FastaiWandbCallback
    from fastai_bestmodel.wandb import WandbCallback
    from fastai_bestmodel.offline import read_offline_run
    rows = []
    for kind in ('fastai', 'ours'):
        tmp = Path(tempfile.mkdtemp())
        learn = _learner(tmp, epochs, True, layers=1, width=512)
        run = wandb.init(project='fastai-bestmodel-bench', mode='offline', dir=tmp)
        cbs = ([FastaiSaveModelCallback(monitor='score'), FastaiWandbCallback(log_model=True, log_preds=False)] if kind == 'fastai'
               else [SaveModelCallback(monitor='score'), WandbCallback(log_model=True, log_preds=False)])
        _fit(learn, epochs, cbs)
        run.finish()
        files = [p for p in (tmp / 'models').iterdir()]
        versions = sum(a['type'] == 'model' for a in read_offline_run(Path(run.dir).parent).artifacts)
        rows.append((kind, len(files), sum(p.stat().st_size for p in files), versions, sorted(p.name for p in files)))
    print(f'5. after a {epochs}-epoch fit improving every epoch (a {rows[0][2]/1e6:.2f} MB model):')
    for kind, n, size, versions, names in rows:
        print(f'   {kind}: {n} files, {size} bytes ({", ".join(names)}); W&B model artifact versions: {versions}')
    return rows


def _io()->tuple:
    "Bytes this process has read and written through system calls so far (Linux's /proc/self/io rchar, wchar)"
    with open('/proc/self/io') as f: d = dict(line.split(': ') for line in f.read().splitlines())
    return int(d['rchar']), int(d['wchar'])


def _time_and_io(cb, event):
    "Record the seconds, bytes read and bytes written of each call of `cb`'s `event` that saved, in `cb.cost`"
    cb.cost, orig = [], getattr(cb, event)
    def measured(*args, **kwargs):
        n, (r0, w0), t0 = len(cb.records), _io(), time.perf_counter()
        try: return orig(*args, **kwargs)
        finally:
            if len(cb.records) > n: cb.cost.append((time.perf_counter() - t0, _io()[0] - r0, _io()[1] - w0))
    setattr(cb, event, measured)
    return cb


def bench_policies(reps, epochs, layers, width):
    "6. The cost of one save under each policy, in a fit where every epoch improves: the best alone, top-k, periodic"
    tmp = Path(tempfile.mkdtemp())
    size = sum(p.numel() for p in _Big(layers, width).parameters()) * 4
    kinds = {'best': dict(), 'top_k': dict(save_top_k=3), 'periodic': dict(save_top_k=0, every_n_train_steps=1, keep_last_n=2)}
    def one(kind):
        learn = _learner(tmp / kind, epochs, True, layers, width)
        cb = _time_and_io(SaveModelCallback(monitor='score', **kinds[kind]), 'after_batch' if kind == 'periodic' else 'after_epoch')
        _fit(learn, epochs, [cb])
        del learn; gc.collect()
        return cb.cost[3:]  # from the 4th save on, top-k moves one checkpoint aside and deletes one with each save
    res = _interleaved(reps, list(kinds), one)
    print(f'6. cost of one save by policy, {size/1e6:.0f} MB of state, every epoch improving; medians of {len(res["best"])} saves each')
    med = {k: [statistics.median(c[i] for c in v) for i in range(3)] for k, v in res.items()}
    for k, (t, r, w) in med.items():
        print(f'   {k:8s}: blocks {t*1000:.1f} ms ({t/med["best"][0]:.2f} of best), reads {r/1e6:.3f} MB, writes {w/1e6:.1f} MB '
              f'({w/size:.3f} of the state; best writes {med["best"][2]/size:.3f})')
    return med


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--layers', type=int, default=3, help='layers of width x width: 3 x 4096 is 50 M parameters')
    p.add_argument('--width', type=int, default=4096)
    p.add_argument('--quick', action='store_true', help='a small model and few repetitions, to check the script runs')
    p.add_argument('--only', type=int, default=None, help='run only this figure (1 to 7)')
    p.add_argument('--writer-nice19', action='store_true',
                   help='the writer thread at the lowest priority, as until 0.1.0: what its removal bought')
    a = p.parse_args()
    if a.writer_nice19:
        from fastai_bestmodel.writer import AsyncCheckpointWriter
        from whole_fit import nice19_run
        AsyncCheckpointWriter._run = nice19_run(AsyncCheckpointWriter._run)
    if a.quick: a.reps, a.layers, a.width = 1, 1, 256
    import fastai_bestmodel.wandb  # noqa: F401  (fixes fastai's WandbCallback crash with fastcore 2.2)
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, device: cpu')
    figures = {4: lambda: bench_memory(a.layers, a.width),  # first: its processes' peaks were higher after the disk-heavy figures ran
               1: lambda: bench_blocking(a.reps, 6, a.layers, a.width), 2: lambda: bench_tracking(max(a.reps, 7), 10),
               3: lambda: bench_digits(a.reps, 8), 5: lambda: bench_files(20), 6: lambda: bench_policies(a.reps, 8, a.layers, a.width),
               7: lambda: bench_whole_fit(a.reps, 6, a.width, a.layers)}  # whole fits that train for real, each in its own process
    for n, figure in figures.items():
        if a.only in (None, n): figure()
