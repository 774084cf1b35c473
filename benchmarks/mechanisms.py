"""Do four clever mechanisms earn their place? Each measured with and without, paired, against a threshold fixed before.

The mechanisms, and what is compared (with / without), each fit in its own process, the two kinds of a pair run one
after the other, their order alternating over repetitions (ABBA), the four mechanisms' pairs interleaved in each repetition:

1. skip-reload: `SaveModelCallback._holds_chosen` (with `_state_marks`, `_may_change_weights`, `_VETTED` and the
   private `tensor._version`) skips loading the best checkpoint back at the end of a fit whose last epoch was the best.
   A fit whose every epoch improves (`ScriptedMetric`, `monitor='score'`), default settings, vs the same fit with
   `SaveModelCallback._holds_chosen = lambda self: False`. Figure: the end-of-fit time it saves (the time spent in the
   tracker's `after_fit`, without minus with) as a fraction of the whole fit without it, per repetition.
2. background: `async_save='background'` (the fit returns before its last write ends) vs `async_save=True` (the fit
   waits for its writes). Figure: time until the fit returns, ratio background / True; also until the last checkpoint
   is on disk (`fastai_bestmodel.checkpoint.wait_for_saves()` after the fit).
3. CRC toggle: `durable.torch_save_without_crcs` (turns torch's CRC32 of each zip record off, process-wide, under a
   lock) vs plain `torch.save(obj, f)` (patched where `checkpoint` imported it, and in `durable`). Figure: the time of
   one `save_checkpoint` of a 200 MB state dict (3 x 4096x4096 float32) to disk (written, digested, fsynced), both
   kinds in one process, interleaved ABBA, `os.sync()` before each; also the same into /dev/shm (no disk: CPU only),
   and whole fits with `SaveModelCallback(every_epoch=True)`.
4. resume payload in the optimizer state: `with_opt=True` checkpoints carry `resume_payload(...)` as `opt['resume']`;
   vs `fastai_bestmodel.tracker.resume_payload` patched to return None. Figures: extra bytes per checkpoint (from
   the `.json`'s `bytes`; the checkpoint of model and Adam state is about 200 MB) and extra save time: one
   `save_checkpoint` of a learner's model and Adam state with the payload (computed in the timed save, as the tracker
   does) vs with None in its place, in one process, interleaved ABBA, `os.sync()` before each (the verdict's figure);
   also, from the paired fits, the time spent in the tracker's `_save` summed over the fit, and in `resume_payload`.
   What it buys: exact resume (random states, running loss, epoch rows; see tests/test_resume.py). No speed gain
   is expected: the question is its cost.

Every fit: an MLP of 4 layers 2048 wide (16.8 M parameters, 67 MB; with Adam's state 201 MB) that trains for real
on in-memory batches, as `whole_fit.py` builds it, on one thread (`torch.set_num_threads(1)`: on a shared 2-core
machine two OpenMP threads slow down many-fold whenever another process takes a core, which swamped a pilot run's
whole-fit ratios; the other core is left to the writer thread), one warm-up fit of one epoch, then the timed fit of
`--epochs` epochs of about `--seconds` each; the batches per epoch are calibrated on this machine first. For the
mechanisms that act at the end of a fit (1 and 2) the time the tracker's `after_fit` takes is measured too: the
fraction they save shrinks as fits grow longer, and the milliseconds saved are printed so it can be rescaled.

Thresholds (fixed before measuring; printed first):
- skip-reload: KEEP if it saves >= 2% of a whole fit's time in the last-epoch-best case (median), else GO.
- background: KEEP if the fit returns >= 5% sooner than with `async_save=True` (median ratio <= 0.95), else GO.
- CRC toggle: KEEP if a 200 MB save is >= 10% faster with it (median ratio <= 0.90), else GO.
- resume in the optimizer state: KEEP if it costs <= 2% extra save time (median ratio <= 1.02) and <= 1% extra
  bytes per checkpoint (200 MB case), else look for another place.

Run: `python benchmarks/mechanisms.py` (or `python -m benchmarks.mechanisms`); `--reps` (>= 5) and the fit size are
options. The ratios of every repetition are printed with their median and range: on a shared machine the spread
between runs can be as large as the effects."""
import argparse, contextlib, io, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('WANDB_SILENT', 'true')
ROOT = Path(__file__).resolve().parent.parent

THRESHOLDS = {
    'skip-reload': 'KEEP if the end-of-fit time it saves is >= 2% of the whole fit (median of paired fractions), else GO',
    'background': "KEEP if the fit returns >= 5% sooner than with async_save=True (median of paired ratios <= 0.95), else GO",
    'CRC toggle': 'KEEP if a 200 MB save is >= 10% faster with it (median of paired ratios <= 0.90), else GO',
    'resume in opt state': 'KEEP if extra save time <= 2% (median of paired ratios <= 1.02) and extra bytes <= 1% per '
                           'checkpoint (200 MB case), else look for another place',
}
# mechanism -> (the kind with it, the kind without it)
PAIRS = {'skip-reload': ('reload_skip', 'reload_always'), 'background': ('background', 'async'),
         'CRC toggle': ('nocrc_fit', 'crc_fit'), 'resume in opt state': ('payload', 'nopayload')}


def _learner(batches, epochs, width, layers, bs, path):
    "The learner every fit trains: an MLP on in-memory batches, one training thread, a metric that improves every epoch"
    import torch
    from torch import nn
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai_bestmodel.test_utils import ScriptedMetric
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xs = [torch.randn(bs, width) for _ in range(4)]
    ys = [torch.randn(bs, width) for _ in range(4)]
    class Batches:  # items are whole batches, already in memory: no per-item collation
        def __init__(self, n): self.n = n
        def __len__(self): return self.n
        def __getitem__(self, i): return xs[i % 4], ys[i % 4]
    dls = DataLoaders(DataLoader(Batches(batches), bs=None, shuffle=False), DataLoader(Batches(2), bs=None))
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())][:-1])
    shutil.rmtree(path, ignore_errors=True)
    return Learner(dls, model, loss_func=nn.MSELoss(), lr=1e-5, path=path,
                   metrics=ScriptedMetric([float(i) for i in range(epochs)], 'score'))  # every epoch improves: the last is the best


def _child(kind, batches, epochs, width, layers, bs, folder):
    "One fit of `kind` in this process: print what it measured as JSON"
    import torch
    import fastai_bestmodel.tracker as tracker, fastai_bestmodel.checkpoint as checkpoint, fastai_bestmodel.durable as durable
    from fastai_bestmodel.tracker import SaveModelCallback
    # The mechanism taken away, for the kinds without it
    if kind == 'reload_always': SaveModelCallback._holds_chosen = lambda self: False
    if kind == 'crc_fit':
        def plain_save(obj, f): torch.save(obj, f)
        durable.torch_save_without_crcs = checkpoint.torch_save_without_crcs = plain_save
    if kind == 'nopayload': tracker.resume_payload = lambda *args, **kwargs: None
    # Instruments, the same in both kinds of a pair: time in the tracker's saves, its end of fit, the payload; reloads
    timing = dict(save=0., saves=0, end=0., payload=0., payloads=0, reloads=0)
    def timed(f, key, count=None):
        def g(*args, **kwargs):
            t = time.perf_counter()
            try: return f(*args, **kwargs)
            finally:
                timing[key] += time.perf_counter() - t
                if count: timing[count] += 1
        return g
    SaveModelCallback._save = timed(SaveModelCallback._save, 'save', 'saves')
    SaveModelCallback._fit_ended = timed(SaveModelCallback._fit_ended, 'end')
    tracker.resume_payload = timed(tracker.resume_payload, 'payload', 'payloads')
    load = tracker.load_best_model
    def counted_load(*args, **kwargs): timing['reloads'] += 1; return load(*args, **kwargs)
    tracker.load_best_model = counted_load

    learn = _learner(batches, epochs, width, layers, bs, Path(folder)/kind)
    kw = dict(monitor='score', fname=kind)
    cb = {'reload_skip': dict(), 'reload_always': dict(),
          'background': dict(async_save='background'), 'async': dict(async_save=True),
          'nocrc_fit': dict(every_epoch=True), 'crc_fit': dict(every_epoch=True),
          'payload': dict(with_opt=True), 'nopayload': dict(with_opt=True)}[kind]
    cb = SaveModelCallback(**kw, **cb)
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1, cbs=[])  # warm up: the allocator, the first batch's costs
        for k in timing: timing[k] = 0
        t0 = time.perf_counter()
        learn.fit(epochs, cbs=[cb])
        whole = time.perf_counter() - t0
        checkpoint.wait_for_saves()  # `background`: its last checkpoint lands after the fit returned
        durable_t = time.perf_counter() - t0
    desc = checkpoint.read_checkpoint(cb.last_saved_path)
    print(json.dumps(dict(kind=kind, whole=whole, durable=durable_t, bytes=desc['bytes'], **timing)))


def _crc_saves(reps, folder, mib=200):
    "Single saves of a `mib` MB state dict with `save_checkpoint`, without CRCs and with, interleaved ABBA in this process"
    import torch
    import fastai_bestmodel.checkpoint as checkpoint
    torch.set_num_threads(1)
    ours = checkpoint.torch_save_without_crcs
    def plain_save(obj, f): torch.save(obj, f)
    side = 4096
    n = max(1, round(mib * 2**20 / (side*side*4)))
    torch.manual_seed(0)
    state = {f'{i}.weight': torch.randn(side, side) for i in range(n)}
    out = {}
    for where, base in (('disk', folder), ('shm', '/dev/shm' if os.path.isdir('/dev/shm') else None)):
        if base is None: continue
        d = Path(tempfile.mkdtemp(dir=base))
        times = {'nocrc': [], 'crc': []}
        try:
            for r in range(reps + 1):  # the first round warms up and is dropped
                for kind in (('nocrc', 'crc') if r % 2 == 0 else ('crc', 'nocrc')):
                    checkpoint.torch_save_without_crcs = ours if kind == 'nocrc' else plain_save
                    os.sync()
                    t = time.perf_counter()
                    desc = checkpoint.save_checkpoint(d/f'{kind}.pth', state, {'epoch': r})
                    dt = time.perf_counter() - t
                    if r: times[kind].append(dt)
                    for p in d.iterdir(): p.unlink()
        finally:
            checkpoint.torch_save_without_crcs = ours
            shutil.rmtree(d, ignore_errors=True)
        out[where] = times
    print(json.dumps(dict(bytes=desc['bytes'], **out)))


def _payload_saves(reps, batches, width, layers, bs, folder):
    """Single saves of a learner's model and Adam state (about 200 MB) with `save_checkpoint`, with the resume payload (computed
    for each save, as the tracker does) and with None in its place, interleaved ABBA in this process; `os.sync()` before each"""
    import fastai_bestmodel.checkpoint as checkpoint
    from fastai_bestmodel.resume import resume_payload
    from fastai_bestmodel.policies import SaveRecord
    learn = _learner(batches, 2, width, layers, bs, Path(folder)/'payload_saves')
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()): learn.fit(1)  # Adam's state, a running loss
    rec = SaveRecord(Path(folder)/'r.pth', 'best', 0, batches, {'epoch': 0, 'score': 0.})
    d = Path(tempfile.mkdtemp(dir=folder))
    times, sizes = {'payload': [], 'nopayload': []}, {}
    try:
        for r in range(reps + 1):  # the first round warms up and is dropped
            for kind in (('payload', 'nopayload') if r % 2 == 0 else ('nopayload', 'payload')):
                os.sync()
                t = time.perf_counter()
                resume = resume_payload(learn, 0, batches, [rec]) if kind == 'payload' else None
                state = {'model': learn.model.state_dict(), 'opt': {**learn.opt.state_dict(), 'resume': resume}}
                desc = checkpoint.save_checkpoint(d/f'{kind}.pth', state, {'epoch': r}, holds=['model', 'opt'])
                dt = time.perf_counter() - t
                if r: times[kind].append(dt)
                sizes[kind] = desc['bytes']
                for p in d.iterdir(): p.unlink()
    finally: shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(dict(times=times, bytes=sizes)))


def _run_child(args):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode: raise RuntimeError(f'child {args} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _calibrate(width, layers, bs, seconds):
    "Batches per epoch for training epochs of about `seconds` on this machine, on one thread as the fits here train"
    sys.path.insert(0, str(Path(__file__).parent))
    from whole_fit import _calibrate as calibrate
    return calibrate(width, layers, bs, seconds, threads=1)


def _summary(xs, fmt='{:.3f}'):
    return (f"median {fmt.format(statistics.median(xs))}, range {fmt.format(min(xs))}..{fmt.format(max(xs))}, n={len(xs)}; "
            f"per rep: {' '.join(fmt.format(x) for x in xs)}")


def main(reps=6, epochs=4, width=2048, layers=4, bs=16, seconds=1.0, crc_reps=8):
    t_start = time.perf_counter()
    from fastai_bestmodel.tracker import SaveModelCallback
    if not hasattr(SaveModelCallback, '_holds_chosen'):  # removed on this benchmark's verdicts
        sys.exit("skip-reload and async_save='background' were removed in 0.1.0 on this benchmark's verdicts "
                 "(benchmarks/results/mechanisms-cpu-2026-12-07.txt). To measure the four mechanisms again, run it in a "
                 "checkout of the commit before: git worktree add /tmp/mech 5e9f423 && cd /tmp/mech && "
                 "PYTHONPATH=. python benchmarks/mechanisms.py")
    print('Thresholds, fixed before measuring:')
    for k, v in THRESHOLDS.items(): print(f'  {k:20s}: {v}')
    print(flush=True)
    batches, per_batch = _calibrate(width, layers, bs, seconds)
    n = layers * (width*width + width)
    print(f'Fits: an MLP of {layers} layers {width} wide ({n/1e6:.1f} M parameters, {n*4/1e6:.0f} MB; with Adam state '
          f'{n*12/1e6:.0f} MB), {batches} batches of {bs} an epoch ({per_batch*1000:.0f} ms each: epochs of about '
          f'{batches*per_batch:.1f} s), {epochs} epochs each improving (the last is the best), after a 1-epoch warm-up fit; '
          f'each fit in its own process, training on 1 thread, {reps} repetitions, pairs in ABBA order, on cpu ({os.cpu_count()} cores); '
          f'load average at start {os.getloadavg()[0]:.2f}', flush=True)
    folder = tempfile.mkdtemp()
    runs = {k: [] for pair in PAIRS.values() for k in pair}
    loads = []
    try:
        for r in range(reps):
            loads.append(os.getloadavg()[0])
            for mech, pair in PAIRS.items():
                for kind in (pair if r % 2 == 0 else pair[::-1]):
                    os.sync()  # the last fit's writes reach the disk now, not during this fit
                    res = _run_child(['--child', kind, '--batches', str(batches), '--epochs', str(epochs), '--width', str(width),
                                      '--layers', str(layers), '--bs', str(bs), '--folder', folder])
                    runs[kind].append(res)
                    print(f'   rep {r} {kind:13s}: fit {res["whole"]:.2f} s, on disk {res["durable"]:.2f} s, end of fit '
                          f'{res["end"]*1000:.0f} ms, saves {res["saves"]} in {res["save"]*1000:.0f} ms, reloads {res["reloads"]}, '
                          f'{res["bytes"]} bytes', file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
        crc = _run_child(['--crc-saves', str(crc_reps), '--folder', folder])
        pay = _run_child(['--payload-saves', str(crc_reps), '--batches', str(batches), '--width', str(width), '--layers', str(layers),
                          '--bs', str(bs), '--folder', folder])
    finally: shutil.rmtree(folder, ignore_errors=True)

    print(f'\nLoad average (1 min) at the start of each repetition and at the end: {" ".join(f"{l:.2f}" for l in loads)}\n')
    verdicts = {}
    # 1. skip-reload
    w, wo = runs['reload_skip'], runs['reload_always']
    saved = [(b['end'] - a['end']) / b['whole'] for a, b in zip(w, wo)]
    whole = [a['whole'] / b['whole'] for a, b in zip(w, wo)]
    ok = statistics.median(saved) >= 0.02
    verdicts['skip-reload'] = ok
    print(f'1. skip-reload -- threshold: {THRESHOLDS["skip-reload"]}')
    print(f'   reloads with it: {[a["reloads"] for a in w]}, without: {[b["reloads"] for b in wo]}')
    print(f'   end of fit with it {statistics.median(a["end"] for a in w)*1000:.0f} ms, without {statistics.median(b["end"] for b in wo)*1000:.0f} ms '
          f'(medians); whole fit without {statistics.median(b["whole"] for b in wo):.2f} s')
    print(f'   end-of-fit time saved / whole fit without: {_summary(saved)}')
    print(f'   whole fit, with / without:                 {_summary(whole)}')
    print(f'   -> {"KEEP" if ok else "GO"}\n')
    # 2. background
    w, wo = runs['background'], runs['async']
    ret = [a['whole'] / b['whole'] for a, b in zip(w, wo)]
    disk = [a['durable'] / b['durable'] for a, b in zip(w, wo)]
    end = [(b['end'] - a['end']) / b['whole'] for a, b in zip(w, wo)]
    ok = statistics.median(ret) <= 0.95
    verdicts['background'] = ok
    print(f'2. background -- threshold: {THRESHOLDS["background"]}')
    print(f'   fit returns: background {statistics.median(a["whole"] for a in w):.2f} s, async_save=True {statistics.median(b["whole"] for b in wo):.2f} s (medians)')
    print(f'   until the fit returns, background / True:       {_summary(ret)}')
    print(f'   until the checkpoint is on disk, background / True: {_summary(disk)}')
    print(f'   end of fit (the tracker\'s after_fit): background {statistics.median(a["end"] for a in w)*1000:.0f} ms, True '
          f'{statistics.median(b["end"] for b in wo)*1000:.0f} ms (medians); saved / whole fit with True: {_summary(end)}')
    print(f'   -> {"KEEP" if ok else "GO"}\n')
    # 3. CRC toggle
    single = [a / b for a, b in zip(crc['disk']['nocrc'], crc['disk']['crc'])]
    ok = statistics.median(single) <= 0.90
    verdicts['CRC toggle'] = ok
    w, wo = runs['nocrc_fit'], runs['crc_fit']
    print(f'3. CRC toggle -- threshold: {THRESHOLDS["CRC toggle"]}')
    print(f'   one save_checkpoint of {crc["bytes"]/1e6:.0f} MB to disk: without CRCs {statistics.median(crc["disk"]["nocrc"])*1000:.0f} ms, '
          f'with {statistics.median(crc["disk"]["crc"])*1000:.0f} ms (medians)')
    print(f'   single save to disk, without CRCs / with:  {_summary(single)}')
    if 'shm' in crc:
        shm = [a / b for a, b in zip(crc['shm']['nocrc'], crc['shm']['crc'])]
        print(f'   same into /dev/shm (no disk): {statistics.median(crc["shm"]["nocrc"])*1000:.0f} vs {statistics.median(crc["shm"]["crc"])*1000:.0f} ms; '
              f'ratio {_summary(shm)}')
    print(f'   fits saving every epoch ({w[0]["saves"]} saves of {w[0]["bytes"]/1e6:.0f} MB): time in saves, without CRCs / with: '
          f'{_summary([a["save"] / b["save"] for a, b in zip(w, wo)])}')
    print(f'   ... whole fit, without CRCs / with:        {_summary([a["whole"] / b["whole"] for a, b in zip(w, wo)])}')
    print(f'   -> {"KEEP" if ok else "GO"}\n')
    # 4. resume payload
    w, wo = runs['payload'], runs['nopayload']
    single = [a / b for a, b in zip(pay['times']['payload'], pay['times']['nopayload'])]
    fit_save = [a['save'] / b['save'] for a, b in zip(w, wo)]
    extra_bytes = [a['bytes'] - b['bytes'] for a, b in zip(w, wo)]
    frac_bytes = [a['bytes'] / b['bytes'] - 1 for a, b in zip(w, wo)]
    ok = statistics.median(single) <= 1.02 and max(frac_bytes) <= 0.01
    verdicts['resume in opt state'] = ok
    print(f'4. resume payload in the optimizer state -- threshold: {THRESHOLDS["resume in opt state"]}')
    print(f'   checkpoint (model + Adam state) {statistics.median(b["bytes"] for b in wo)/1e6:.1f} MB; extra bytes with the payload '
          f'(fits of {epochs} epochs): {extra_bytes}, fraction {max(frac_bytes):.2e} at most')
    print(f'   one save_checkpoint of it to disk: with payload {statistics.median(pay["times"]["payload"])*1000:.0f} ms, without '
          f'{statistics.median(pay["times"]["nopayload"])*1000:.0f} ms (medians; payload computed in the timed save)')
    print(f'   single save, with payload / without:       {_summary(single)}')
    print(f'   time in saves over a fit ({w[0]["saves"]} saves), with / without: {_summary(fit_save)}')
    print(f'   whole fit, with / without:                 {_summary([a["whole"] / b["whole"] for a, b in zip(w, wo)])}')
    print(f'   time in resume_payload itself, in the fits: {statistics.median(a["payload"] / a["payloads"] for a in w)*1000:.2f} ms a save, '
          f'{statistics.median(a["payload"] / a["save"] for a in w):.2e} of the time in saves (median)')
    print(f'   buys: exact resume (random states, running loss, epoch rows; tests/test_resume.py); no speed gain expected')
    print(f'   -> {"KEEP" if ok else "LOOK FOR ANOTHER PLACE"}\n')
    print('Verdicts: ' + '; '.join(f'{k}: {("KEEP" if v else ("GO" if k != "resume in opt state" else "LOOK ELSEWHERE"))}' for k, v in verdicts.items()))
    print(f'(benchmark ran {time.perf_counter() - t_start:.0f} s)')
    return verdicts


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--child'); p.add_argument('--crc-saves', type=int); p.add_argument('--payload-saves', type=int)
    p.add_argument('--folder')
    p.add_argument('--batches', type=int)
    p.add_argument('--reps', type=int, default=6); p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--width', type=int, default=2048); p.add_argument('--layers', type=int, default=4)
    p.add_argument('--bs', type=int, default=16); p.add_argument('--seconds', type=float, default=1.0)
    p.add_argument('--crc-reps', type=int, default=8)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.child: _child(a.child, a.batches, a.epochs, a.width, a.layers, a.bs, a.folder)
    elif a.crc_saves: _crc_saves(a.crc_saves, a.folder)
    elif a.payload_saves: _payload_saves(a.payload_saves, a.batches, a.width, a.layers, a.bs, a.folder)
    else:
        if a.reps < 5: p.error('--reps: at least 5 repetitions')
        main(a.reps, a.epochs, a.width, a.layers, a.bs, a.seconds, a.crc_reps)
