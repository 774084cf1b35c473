"""Draw the figures the README and the docs show, into nbs/images/:
- `checkpoints.png`: `plot_checkpoints` after a real fit (digits, `save_top_k=3, save_last=True`, by `valid_loss`),
  for the README and the guide;
- `benchmarks.png`: the "At a glance" table of nbs/benchmarks.ipynb as a chart, each ratio's median with its range
  over repetitions as error bars, from the numbers in that table (copied below: change both together).

Run: `python tools/make_figures.py` (about 15 s on 2 CPUs; `--only benchmarks` or `--only checkpoints`)."""
import argparse, os, sys, tempfile, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT/'nbs'/'images'

# (row of the table, before: (median, low, high) or None, after: (median, low, high), target or None); a ratio
# with no range measured has low = high = median
AT_A_GLANCE = [
    ("W&B log_model='all': loop blocked per checkpoint\n/ a plain torch.save", (1.93, 1.70, 2.08), (0.054, 0.029, 0.096), 0.10),
    ("W&B log_model='end': end of fit\n/ a plain torch.save", (1.85, 1.52, 1.97), (1.36, 1.30, 1.74), None),
    ("saves back to back: ours async\n/ a plain torch.save", (0.54, 0.54, 0.54), (0.14, 0.14, 0.14), None),
    ("a fit's blocking, async / sync:\nbest alone", (1.04, 0.29, 2.57), (0.69, 0.40, 2.08), 1.0),
    ("a fit's blocking, async / sync:\ntop 3", (1.08, 0.35, 5.01), (1.07, 0.81, 3.33), 1.0),
    ("whole fit until durable, async / sync:\nbest alone", None, (0.94, 0.79, 1.03), 1.0),
    ("whole fit until durable, async / sync:\ntop 3", None, (0.99, 0.99, 1.09), 1.0),
    ("whole fit until durable, async / sync:\na save every batch", None, (0.94, 0.81, 0.96), 1.0),
    ("a durable sync save: user CPU\n/ torch.save's", (1.80, 1.80, 1.80), (0.30, 0.05, 0.56), 1.0),
]

def benchmarks(out:Path):
    "The table's ratios as horizontal bars on a log scale: before in grey, after in blue, targets as ticks"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6.2), dpi=110)
    n = len(AT_A_GLANCE)
    for i, (label, before, after, target) in enumerate(AT_A_GLANCE):
        y = n - 1 - i
        for dy, r, color, name in ((0.18, before, '#9e9e9e', 'before'), (-0.18, after, '#3f51b5', 'after')):
            if r is None: continue
            med, lo, hi = r
            ax.barh(y + dy, med, height=0.34, color=color, label=name if i == 0 or (name == 'after' and i == 5) else None)
            if hi > lo: ax.errorbar(med, y + dy, xerr=[[med - lo], [hi - med]], fmt='none', ecolor='black', capsize=3, lw=1)
            ax.text(hi * 1.08, y + dy, f'{med:g}', va='center', fontsize=8)
        if target: ax.plot([target, target], [y - 0.42, y + 0.42], color='#e53935', lw=2, label='target' if i == 0 else None)
    ax.set_xscale('log'); ax.set_xlim(0.02, 6)
    ax.axvline(1, color='black', lw=0.6, ls=':')
    ax.set_yticks(range(n)); ax.set_yticklabels([r[0] for r in reversed(AT_A_GLANCE)], fontsize=8)
    ax.set_xlabel('ratio (log scale; lower is better; bars: median, whiskers: range over repetitions)')
    ax.set_title('At a glance: 2 CPUs, torch 2.14.1 on the CPU, 2026-12-07 and 08', fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), loc='lower right', fontsize=8)
    fig.tight_layout(); fig.savefig(out); plt.close(fig)

def checkpoints(out:Path):
    "`plot_checkpoints` after an 8-epoch fit of the digits, keeping the 3 best and the last"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sys.path.insert(0, str(ROOT))
    from fastai_bestmodel.all import SaveModelCallback, plot_checkpoints
    from fastai_bestmodel.test_utils import digits_learner
    with tempfile.TemporaryDirectory() as path, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = digits_learner(path=path)
        tracker = SaveModelCallback(save_top_k=3, save_last=True)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 3e-2, cbs=tracker)
        ax = plot_checkpoints(learn, tracker)
        ax.figure.set_size_inches(8, 4.2)
        ax.figure.savefig(out, dpi=100, bbox_inches='tight')  # the legend sits outside the axes; plt.close(ax.figure)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--only', choices=['benchmarks', 'checkpoints'])
    only = p.parse_args().only
    IMAGES.mkdir(exist_ok=True)
    for name, draw in (('benchmarks', benchmarks), ('checkpoints', checkpoints)):
        if only in (None, name): draw(IMAGES/f'{name}.png'); print(f'wrote {IMAGES/name}.png')
