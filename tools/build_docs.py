"""Build the docs site from the notebooks, offline: each notebook executed (as nbdev's docs do), its `#| hide` and
`#| export` cells (nbdev's convention: a page shows a definition's `show_doc`, not its source) and cell directives left
out, rendered to HTML by nbconvert, with a menu of every page. Fails, naming the notebook and the
cell, if a notebook raises, or if a public name of a module has no `show_doc` in its notebook.

Quarto, which `nbdev-docs` uses, cannot be installed here (its PyPI package downloads a binary at install time).

Run: `python tools/build_docs.py` (writes `_docs/`; `--out DIR` elsewhere)."""
import argparse, html, importlib, json, os, re, shutil, sys, time
from pathlib import Path
import nbformat
from fastcore.nbio import read_nb
from execnb.shell import CaptureShell
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
# The reading order of the site: the README's page, the tutorial, the modules in their order, the benchmarks
PAGES = [('index.ipynb', 'fastai_bestmodel'), ('tutorial.ipynb', 'Tutorial'), ('guide.ipynb', 'Guide')]

def _directives(src:str)->set: return {l[3:].strip().split()[0] for l in src.splitlines() if l.startswith('#|') and l[3:].strip()}

def _title(nb)->str:
    for c in nb.cells:
        if c.cell_type == 'markdown' and (m := re.match(r'#\s+(.+)', c.source)): return m.group(1).strip()
    return 'untitled'

def _no_progress(text:str)->str:
    "A cell's printed text without fastprogress's console bars: each line as it was last redrawn, bars and bar glyphs dropped"
    lines = [l.split('\r')[-1].replace('█', '') for l in text.split('\n')]
    return '\n'.join(l for l in lines if not re.match(r'\s*(Epoch \d+/\d+ :|\|[-█ ]*\|)', l))

def missing_show_docs(path:Path, nb)->list:
    "The public callables of the module `path` exports with no `show_doc` in it"
    src = '\n'.join(c.source for c in nb.cells)
    m = re.search(r'#\|\s*default_exp\s+(\S+)', src)
    if not m or m.group(1) == 'all': return []
    mod = importlib.import_module(f'fastai_bestmodel.{m.group(1)}')
    shown = set(re.findall(r'show_doc\(([\w.]+)', src))
    return [n for n in mod.__all__ if callable(getattr(mod, n)) and n not in shown]

def render(path:Path, shell_path:Path)->tuple:
    "Execute the notebook at `path` and return its title and its HTML body"
    nb = read_nb(path)
    shell = CaptureShell(path=shell_path)
    try: shell.run_all(nb, exc_stop=True, preproc=lambda c: 'eval:' in c.source and '#| eval: false' in c.source)
    except Exception as e: raise SystemExit(f'{path.name}: a cell raised {type(e).__name__}: {e}')
    if (missing := missing_show_docs(path, nb)): raise SystemExit(f'{path.name}: no show_doc for {", ".join(missing)}: every public name is documented.')
    cells = []
    for c in nb.cells:
        src = c.source
        d = _directives(src)
        # nbdev's convention: an `export` cell's source is the module's, and the page shows its `show_doc` (signature
        # and docstring) instead; `exports` would show it. Hidden cells and directives are left out.
        if d & {'hide', 'default_exp', 'export'} or src.startswith('#| hide'): continue
        cell = dict(cell_type=c.cell_type, id=c.get('id') or f'c{len(cells)}', metadata={},
                    source='\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip())
        if c.cell_type == 'code':
            if cell['source'].startswith('show_doc('): cell['metadata'] = {'tags': ['hide_input']}  # its output says it
            outs = json.loads(json.dumps(c.get('outputs', []), default=str))
            for o in outs:  # multiline strings as lists of lines, as on disk: the exporter wants strings
                if isinstance(o.get('text'), list): o['text'] = ''.join(o['text'])
                if 'text' in o: o['text'] = _no_progress(o['text'])
                for k, v in o.get('data', {}).items():
                    if isinstance(v, list): o['data'][k] = ''.join(v)
                    if k == 'text/markdown': o['data'][k] = re.sub(r'\{target="_blank"[^}]*\}', '', o['data'][k])  # Quarto's link attributes
            cell.update(execution_count=None, outputs=[o for o in outs if not (o.get('output_type') == 'stream' and o.get('name') == 'stderr')])
        cells.append(cell)
    out = nbformat.from_dict(dict(nbformat=4, nbformat_minor=5, metadata={}, cells=cells))
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'hide_input'}), enabled=True)
    body, _ = exporter.from_notebook_node(
        out, resources=dict(metadata=dict(name=f'{_title(nb)} - fastai_bestmodel')))
    return _title(nb), body

def build(out:Path):
    out.mkdir(parents=True, exist_ok=True)
    mods = sorted(p.name for p in NBS.glob('[0-9][0-9]_*.ipynb'))
    pages = [p for p in PAGES if (NBS/p[0]).exists()] + [(m, None) for m in mods] + ([('benchmarks.ipynb', 'Benchmarks')] if (NBS/'benchmarks.ipynb').exists() else [])
    sys.path.insert(0, str(ROOT)); os.environ.setdefault('WANDB_MODE', 'offline'); os.environ.setdefault('WANDB_SILENT', 'true')
    done = []
    for name, title in pages:
        t0 = time.perf_counter()
        t, body = render(NBS/name, NBS)
        done.append((name, title or t, body))
        print(f'{name}: {time.perf_counter()-t0:.1f} s', flush=True)
    menu = ''.join(f'<li><a href="{Path(n).stem if n != "index.ipynb" else "index"}.html">{html.escape(t)}</a></li>' for n, t, _ in done)
    nav = f'<nav style="position:fixed;top:0;left:0;width:14em;height:100%;overflow:auto;padding:1em;border-right:1px solid #ddd"><ul style="list-style:none;padding:0">{menu}</ul></nav>'
    for name, title, body in done:
        body = re.sub(r'href="nbs/([\w-]+)\.ipynb"', r'href="\1.html"', body)  # the README's links to pages, on the site
        page = body.replace('<body', '<body style="margin-left:16em"', 1).replace('<main>', f'<main>{nav}', 1) if '<main>' in body else body.replace('</body>', f'{nav}</body>', 1)
        (out/f'{Path(name).stem}.html').write_text(page)
    if (NBS/'images').is_dir(): shutil.copytree(NBS/'images', out/'images', dirs_exist_ok=True)
    print(f'{len(done)} pages in {out}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default=str(ROOT/'_docs'))
    build(Path(p.parse_args().out))
