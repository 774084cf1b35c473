"""Figure 7: whole fits of a 50 M-parameter MLP that trains for real, with each way of saving the best model every epoch.

Each fit runs in its own process (so each has its own peak memory), the kinds interleaved (ABBA) over repetitions.
The figure is the extra time a way of saving adds to a fit that saves nothing, as a ratio to what a plain
`torch.save` each epoch adds: per epoch (medians of the times from one epoch's start to the next's, the first epoch
left out; timed by wrapping `Learner._do_epoch`, as a timing callback from outside fastai would change what the
tracker does: it cannot vouch for such a callback, so it reloads the best at the end, waiting for the last write) and whole fits
(including the final wait for pending saves, and the reload of the best that fastai's callback does and ours does where
the learner does not hold the best already). Each repetition runs every kind, so the
ratios are also computed per repetition (paired) and their range printed: on a shared machine the spread between runs
is as large as the effects."""
import argparse, contextlib, io, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

KINDS = ('none', 'plain', 'fastai', 'sync', 'async', 'sync3', 'async3', 'sync-steps', 'async-steps')
# `3`: `save_top_k=3`; `-steps`: also a save every third of an epoch's batches, the newest 2 kept (`every_n_train_steps`,
# `keep_last_n=2`); a `-nice19` suffix: the writer thread at the lowest priority, as until 0.1.0 (what running it at the
# loop's priority bought)
STEPS_PER_EPOCH = 3  # the step saves of an epoch in the `-steps` kinds


def nice19_run(run):
    "The async writer's thread body, run at the lowest CPU priority, as until 0.1.0 (for measuring what that cost)"
    def lowered(self):
        from fastai_bestmodel.writer import _lower_priority
        _lower_priority()
        return run(self)
    return lowered


def _child(kind, batches, epochs, width, layers, bs, folder):
    "One fit in this process: print its per-epoch times, whole-fit time and peak memory as JSON"
    import torch
    from torch import nn
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.callback.tracker import SaveModelCallback as FastaiSaveModelCallback
    from fastai_bestmodel.tracker import SaveModelCallback
    import fastai_bestmodel.writer as writer
    if kind.endswith('-nice19'):
        writer.AsyncCheckpointWriter._run, kind = nice19_run(writer.AsyncCheckpointWriter._run), kind[:-len('-nice19')]
    from fastai_bestmodel.test_utils import ScriptedMetric
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    xs = [torch.randn(bs, width, device=dev) for _ in range(4)]
    ys = [torch.randn(bs, width, device=dev) for _ in range(4)]
    class Batches:  # items are whole batches, already on the device: no per-item collation
        def __init__(self, n): self.n = n
        def __len__(self): return self.n
        def __getitem__(self, i): return xs[i % 4], ys[i % 4]
    dls = DataLoaders(DataLoader(Batches(batches), bs=None, shuffle=False, device=dev),
                      DataLoader(Batches(2), bs=None, device=dev), device=dev)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())][:-1]).to(dev)
    learn = Learner(dls, model, loss_func=nn.MSELoss(), lr=1e-5, path=folder,
                    metrics=ScriptedMetric([float(i) for i in range(epochs)], 'score'))  # every epoch improves
    class PlainSave(Callback):
        order = 61
        def after_epoch(self): torch.save(self.model.state_dict(), Path(folder)/'plain.pth')
    # Epochs are timed from one's start to the next's, by wrapping the learner's `_do_epoch`, not by a callback: a callback
    # from outside fastai would be one the tracker cannot vouch for, and it would then reload the best at the end (waiting
    # for the last write), which is not what a fit with fastai's callbacks alone does.
    starts, fastai_do_epoch = [], learn._do_epoch
    def timed_epoch():
        if dev.type == 'cuda': torch.cuda.synchronize()
        starts.append(time.perf_counter())
        fastai_do_epoch()
    cbs = {'none': [], 'plain': [PlainSave()], 'fastai': [FastaiSaveModelCallback(monitor='score', comp=lambda a, b: a > b, fname='fastai')],
           'sync': [SaveModelCallback(monitor='score', fname='sync')],
           'async': [SaveModelCallback(monitor='score', fname='async', async_save=True)],
           'sync3': [SaveModelCallback(monitor='score', fname='sync3', save_top_k=3)],
           'async3': [SaveModelCallback(monitor='score', fname='async3', save_top_k=3, async_save=True)],
           **{f'{k}-steps': [SaveModelCallback(monitor='score', fname=f'{k}-steps', async_save=k == 'async', keep_last_n=2,
                                               every_n_train_steps=max(1, batches // STEPS_PER_EPOCH))] for k in ('sync', 'async')},
           }[kind]
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1, cbs=[])  # warm up: kernels, allocator, the first batch's costs
        if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        learn._do_epoch = timed_epoch
        t0 = time.perf_counter()
        learn.fit(epochs, cbs=cbs)
        if dev.type == 'cuda': torch.cuda.synchronize()
        whole = time.perf_counter() - t0
        durable = time.perf_counter() - t0  # a fit returns once its checkpoints are on disk
    epoch_times = [b - a for a, b in zip(starts, starts[1:])]  # each includes its saves; the last epoch's is in `whole` only
    print(json.dumps(dict(kind=kind, epochs=epoch_times, whole=whole, durable=durable, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,
                          gpu_mib=torch.cuda.max_memory_allocated()/2**20 if dev.type == 'cuda' else None,
                          device=torch.cuda.get_device_name() if dev.type == 'cuda' else f'cpu ({os.cpu_count()} cores)')))


def _calibrate(width, layers, bs, seconds, threads=None):
    "Batches per epoch for epochs of about `seconds` on this machine's device (training on `threads` CPU threads if given)"
    code = (f"import time, torch; from torch import nn; d='cuda' if torch.cuda.is_available() else 'cpu'; "
            f"{f'torch.set_num_threads({threads}); ' if threads else ''}"
            f"m=nn.Sequential(*[nn.Linear({width},{width}) for _ in range({layers})]).to(d); o=torch.optim.Adam(m.parameters(), 1e-5); "
            f"x=torch.randn({bs},{width},device=d)\n"
            f"def step(): o.zero_grad(); (m(x)**2).mean().backward(); o.step()\n"
            f"[step() for _ in range(3)]; torch.cuda.synchronize() if d=='cuda' else None; t=time.perf_counter()\n"
            f"[step() for _ in range(10)]; torch.cuda.synchronize() if d=='cuda' else None; print((time.perf_counter()-t)/10)")
    per_batch = float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()[-1])
    return max(2, round(seconds / per_batch)), per_batch


def bench_whole_fit(reps=5, epochs=6, width=4096, layers=3, bs=256, seconds=1.5, kinds=KINDS):
    "7. Whole fits that train for real: extra time per epoch and per fit of each way of saving, as a ratio to a plain torch.save"
    batches, per_batch = _calibrate(width, layers, bs, seconds)
    n = layers * (width*width + width)
    folder = tempfile.mkdtemp()
    kinds = tuple(kinds)
    runs = {k: [] for k in kinds}
    for r in range(reps):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            os.sync()  # the kernel writes back the last fit's unsynced files (a plain torch.save's) now, not during this fit
            out = subprocess.run([sys.executable, __file__, '--child', kind, '--batches', str(batches), '--epochs', str(epochs),
                                  '--width', str(width), '--layers', str(layers), '--bs', str(bs), '--folder', folder],
                                 capture_output=True, text=True)
            if out.returncode: raise RuntimeError(f'the {kind} fit failed:\n{out.stderr[-3000:]}')
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"   rep {r} {kind}: epochs {' '.join(f'{t*1000:.0f}' for t in runs[kind][-1]['epochs'])} ms, fit {runs[kind][-1]['whole']:.2f} s",
                  file=sys.stderr, flush=True)  # as it goes: a run cut short still shows what it measured
    dev = runs['none'][0]['device']
    epoch = {k: statistics.median(t for run in v for t in run['epochs'][1:]) for k, v in runs.items()}
    whole = {k: statistics.median(run['whole'] for run in v) for k, v in runs.items()}
    spread = {k: (min(run['whole'] for run in v), max(run['whole'] for run in v)) for k, v in runs.items()}
    print(f'7. whole fits on {dev}: a {n/1e6:.1f} M-parameter MLP ({n*4/1e6:.0f} MB of weights) training for real, {batches} batches '
          f'of {bs} an epoch ({per_batch*1000:.1f} ms each, epochs of about {batches*per_batch:.1f} s; no DataLoader workers, the '
          f'batches made before on the device), {epochs} epochs each improving, `-steps`: a save every '
          f'{max(1, batches // STEPS_PER_EPOCH)} batches too; {reps} fits of each kind, each in its own process, interleaved')
    for k in kinds:
        peak = runs[k]
        gpu = f", GPU peak {statistics.median(r['gpu_mib'] for r in peak):.0f} MiB" if peak[0]['gpu_mib'] is not None else ''
        print(f'   {k:12s}: epoch {epoch[k]*1000:7.1f} ms (+{(epoch[k]-epoch["none"])*1000:6.1f}), fit {whole[k]:6.2f} s '
              f'(+{whole[k]-whole["none"]:5.2f}; fits {spread[k][0]:.2f}-{spread[k][1]:.2f} s), peak RSS {statistics.median(r["rss_mib"] for r in peak):.0f} MiB{gpu}')
    extra_e = {k: epoch[k] - epoch['none'] for k in kinds}
    extra_w = {k: whole[k] - whole['none'] for k in kinds}
    print('   extra time over no saving, as a ratio to the plain torch.save\'s extra (per epoch; whole fit):')
    durable = {k: statistics.median(run['durable'] for run in v) for k, v in runs.items()}
    def paired(k, key):  # the ratio in each repetition, against that repetition's own none and plain fits
        out = []
        for r in range(reps):
            got = {j: runs[j][r] for j in ('none', 'plain', k)}
            e = {j: statistics.median(got[j]['epochs'][1:]) if key == 'epochs' else got[j][key] for j in got}
            out.append((e[k] - e['none']) / (e['plain'] - e['none']))
        return f'{min(out):.2f} to {max(out):.2f}'
    for k in (k for k in kinds if k not in ('none', 'plain')):
        print(f'     {k:12s} / plain: {extra_e[k]/extra_e["plain"]:.2f}; {extra_w[k]/extra_w["plain"]:.2f}   '
              f'(per repetition: {paired(k, "epochs")}; {paired(k, "whole")})')
    pairs = [(a, a[1:]) for a in kinds if a.startswith('async') and a[1:] in kinds]
    if pairs: print('   async against sync, the same saves, paired by repetition: the fit\'s time, until its last checkpoint '
                    'is durable (median, range; target <= 1.00):')
    for a, s in pairs:
        fit = [runs[a][r]['whole'] / runs[s][r]['whole'] for r in range(reps)]
        extra = [(runs[a][r]['whole'] - runs['none'][r]['whole']) / (runs[s][r]['whole'] - runs['none'][r]['whole'])
                 for r in range(reps)]
        print(f'     {a:12s} / {s:11s}: fit {statistics.median(fit):.2f} ({min(fit):.2f} to {max(fit):.2f}); extra over '
              f'no saving {statistics.median(extra):.2f} ({min(extra):.2f} to {max(extra):.2f})')
    print(f'   plain torch.save adds {extra_e["plain"]*1000:.1f} ms an epoch; the spread of whole no-save fits is '
          f'{(spread["none"][1]-spread["none"][0])*1000:.0f} ms. Target on a GPU: async / plain <= 0.10.')
    return dict(epoch=epoch, whole=whole, durable=durable, runs=runs)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--child'); p.add_argument('--batches', type=int); p.add_argument('--folder')
    p.add_argument('--epochs', type=int, default=6); p.add_argument('--reps', type=int, default=5)
    p.add_argument('--width', type=int, default=4096); p.add_argument('--layers', type=int, default=3)
    p.add_argument('--bs', type=int, default=256); p.add_argument('--seconds', type=float, default=1.5)
    p.add_argument('--kinds', default=','.join(KINDS), help=f'which fits, of {",".join(KINDS)} (none and plain are needed)')
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if a.child: _child(a.child, a.batches, a.epochs, a.width, a.layers, a.bs, a.folder)
    else: bench_whole_fit(a.reps, a.epochs, a.width, a.layers, a.bs, a.seconds, a.kinds.split(','))
