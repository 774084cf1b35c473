"""Build the docs site from the notebooks, offline, with mkdocs-material: search, navigation and a table of contents
per page, all of which work from the built folder with no server (material's `offline` plugin).

Each notebook is executed (as nbdev's docs are) and converted to Markdown with its outputs, as nbdev's Quarto step
would: `#| hide` and `#| export` cells (nbdev's convention: a page shows a definition's `show_doc`, not its source) and
cell directives left out; `show_doc`'s Markdown kept as Markdown, so each name is a heading in the page's contents and
in the search index. Why our own conversion rather than `mkdocs-jupyter`: mkdocs-jupyter renders each notebook to one
HTML blob (no headings in the search or the contents), executes it again, and knows nothing of nbdev's directives.
Quarto, which `nbdev-docs` uses, cannot be installed here (its PyPI package downloads a binary at install time).

The build fails, naming the page, when:
- a notebook raises (naming the cell's error),
- a public name of a module has no `show_doc` in its notebook,
- a page shows an exported cell's source,
- a link or image is broken: mkdocs `--strict` with link validation for the Markdown, then a check of every `href` and
  `src` of the built site (raw HTML outputs included; a link to this repository's files on GitHub must name a file
  that exists; none may be to a `.html.md` page),
- the search index has no entry for `SaveModelCallback`.

Run: `python tools/build_docs.py` (writes `_docs/`; `--out DIR` elsewhere)."""
import argparse, base64, html, importlib, inspect, json, os, re, shutil, subprocess, sys, tempfile, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse, unquote
from fastcore.nbio import read_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
REPO = 'https://github.com/fastai-bestmodel/fastai_bestmodel'
# The reading order of the site: the README's page, the tutorial, the guide, the modules in their order, the benchmarks
PAGES = [('index.ipynb', 'Home'), ('tutorial.ipynb', 'Tutorial'), ('guide.ipynb', 'Guide')]
EXTRA_CSS = """
/* the guide's comparison table: cells wrap, so its last column shows at 1280 px */
.md-typeset table:not([class]) { font-size: .7rem; }
.md-typeset table:not([class]) td, .md-typeset table:not([class]) th { padding: .5em .8em; }
.md-typeset table:not([class]) code { word-break: break-word; }
.md-typeset .nb-output pre > code { max-height: 30em; }
"""

def _directives(src:str)->set: return {l[3:].strip().split()[0] for l in src.splitlines() if l.startswith('#|') and l[3:].strip()}

def page_name(nb_name:str)->str:
    "The page a notebook becomes, as nbdev names it: `10_tracker.ipynb` is `tracker.md`"
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(nb_name).stem.lower()) + '.md'

def _title(nb)->str:
    for c in nb.cells:
        if c.cell_type == 'markdown' and (m := re.match(r'#\s+(.+)', c.source)): return m.group(1).strip()
    return 'untitled'

def _no_progress(text:str)->str:
    "A cell's printed text without fastprogress's console bars: each line as it was last redrawn, bars and bar glyphs dropped"
    lines = [l.split('\r')[-1].replace('█', '') for l in text.split('\n')]
    return '\n'.join(l for l in lines if not re.match(r'\s*(Epoch \d+/\d+ :|\|[-█ ]*\|)', l))

def _links(md:str)->str:
    "Links to notebooks as links to their pages: `11_wandb.ipynb#x` and the README's `nbs/guide.ipynb` on the site"
    md = md.replace('](nbs/images/', '](images/')
    return re.sub(r'\]\((?:nbs/)?([\w-]+)\.ipynb(#[\w-]+)?\)', lambda m: f']({page_name(m.group(1))}{m.group(2) or ""})', md)

def missing_show_docs(path:Path, nb)->list:
    "The public callables of the module `path` exports with no `show_doc` in it"
    src = '\n'.join(c.source for c in nb.cells)
    m = re.search(r'#\|\s*default_exp\s+(\S+)', src)
    if not m or m.group(1) == 'all': return []
    mod = importlib.import_module(f'fastai_bestmodel.{m.group(1)}')
    shown = set(re.findall(r'show_doc\(([\w.]+)', src))
    return [n for n in mod.__all__ if callable(getattr(mod, n)) and n not in shown]

def signature_md(md:str, obj)->str:
    "`show_doc`'s Markdown as a user reads it: a class as the call that makes it, no `NoneType` for a `None` default"
    md = re.sub(r'\{target="_blank"[^}]*\}', '', md)  # Quarto's link attributes
    md = re.sub(r'(\w+):NoneType=None', r'\1=None', md)
    try: line = inspect.getsourcelines(inspect.unwrap(obj))[1]
    except (TypeError, OSError): line = None
    md = md.replace('#LNone)', f'#L{line})' if line else ')')
    if isinstance(obj, type):
        md = re.sub(r'```python\n+def (\w+)\(', r'```python\n\1(', md, count=1)
        md = re.sub(r'(\n\)|\(\)):\n```', r'\1\n```', md, count=1)
    return md

def _fence(text:str, lang='')->str:
    ticks = '````' if '```' in text else '```'
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}'

def _output_md(o:dict, img:callable)->str:
    "One cell output as Markdown: Markdown as is, images as files, HTML raw, text fenced"
    if o.get('output_type') == 'stream':
        return '' if o.get('name') == 'stderr' or not (t := _no_progress(''.join(o.get('text', ''))).strip('\n')) else _fence(t, 'text')
    data = {k: ''.join(v) if isinstance(v, list) else v for k, v in o.get('data', {}).items()}
    if 'text/markdown' in data: return re.sub(r'\{target="_blank"[^}]*\}', '', data['text/markdown'])
    if 'image/png' in data: return f'![a figure]({img(base64.b64decode(data["image/png"]))})'
    if 'text/html' in data: return f'<div class="nb-output" markdown="0">\n{data["text/html"].strip()}\n</div>'
    if 'text/plain' in data: return _fence(data['text/plain'], 'text')
    return ''

def render(path:Path, docs:Path)->tuple:
    "Execute the notebook at `path`; return its title, its Markdown and the source lines of its exported cells"
    nb = read_nb(path)
    shell = CaptureShell(path=NBS)
    try: shell.run_all(nb, exc_stop=True, preproc=lambda c: 'eval:' in c.source and '#| eval: false' in c.source)
    except Exception as e: raise SystemExit(f'{path.name}: a cell raised {type(e).__name__}: {e}')
    if (missing := missing_show_docs(path, nb)): raise SystemExit(f'{path.name}: no show_doc for {", ".join(missing)}: every public name is documented.')
    stem, parts, exported, n_img = Path(page_name(path.name)).stem, [], [], 0
    def img(data:bytes)->str:
        nonlocal n_img
        n_img += 1
        (docs/'figures').mkdir(exist_ok=True)
        (docs/'figures'/f'{stem}-{n_img}.png').write_bytes(data)
        return f'figures/{stem}-{n_img}.png'
    for c in nb.cells:
        d = _directives(c.source)
        if 'export' in d: exported.append(c.source)
        # an `export` cell's source is the module's, and the page shows its `show_doc` instead (`exports` would show it)
        if d & {'hide', 'default_exp', 'export'} or c.source.startswith('#| hide'): continue
        src = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
        if c.cell_type == 'markdown': parts.append(_links(src)); continue
        if c.cell_type != 'code': continue
        doc_of = re.match(r'show_doc\(([\w.]+)', src)
        if src and not doc_of: parts.append(_fence(src, 'python'))  # a show_doc's output says it
        for o in c.get('outputs', []):
            md = _output_md(o, img)
            if doc_of: md = signature_md(md, eval(doc_of.group(1), shell.user_ns))
            if md: parts.append(md if doc_of or 'text/markdown' in o.get('data', {}) else f'<div class="nb-output" markdown>\n\n{md}\n\n</div>')
    return _title(nb), '\n\n'.join(parts) + '\n', exported

def shown_source(md:str, exported:list)->str|None:
    "A line of an exported cell that the page shows in a code block (signatures, which `show_doc` shows too, aside)"
    code = '\n'.join(re.findall(r'```python\n(.*?)\n```', md, re.S))
    shown = {l.strip() for l in code.splitlines()}
    sigs = {l.strip() for b in re.findall(r'###+ .*?\n+```python\n(.*?)\n```', md, re.S) for l in b.splitlines()}
    for src in exported:
        body = [l.strip() for l in src.splitlines() if len(l.strip()) > 24 and not l.lstrip().startswith(('#', '"', "'"))]
        hits = [l for l in body if l in shown and l not in sigs]
        if len(hits) >= 2: return hits[0]
    return None

class _Refs(HTMLParser):
    "The `href`s and `src`s of a page, and its element ids"
    def __init__(self):
        super().__init__(); self.refs, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if a.get('name'): self.ids.add(a['name'])
        for k in ('href', 'src'):
            if a.get(k): self.refs.append((tag, a[k]))

def broken_links(site:Path)->list:
    "Every `href` and `src` of the built pages that leads nowhere: a missing file or anchor, or a file of this repo that does not exist"
    pages = {p: _Refs() for p in site.rglob('*.html') if p.name != '404.html'}  # 404's links are from the server's root
    for p, r in pages.items(): r.feed(p.read_text())
    bad = []
    for p, r in pages.items():
        for tag, ref in r.refs:
            u = urlparse(ref)
            where = f'{p.relative_to(site)}: {ref}'
            if ref.endswith('.html.md') or '.html.md#' in ref: bad.append(f'{where} (a .html.md page)'); continue
            if u.scheme in ('http', 'https'):
                if ref.startswith(REPO + '/'):
                    m = re.match(r'/(?:blob|tree)/main/([^#?]+)', ref[len(REPO):])
                    if not m and ref[len(REPO):].split('#')[0] not in ('/issues', '/'): bad.append(f'{where} (not a file of the repository)')
                    elif m and not (ROOT/unquote(m.group(1))).exists(): bad.append(f'{where} (no such file in the repository)')
                continue
            if u.scheme or ref.startswith('#') and not ref[1:]: continue
            target = (p.parent/unquote(u.path)).resolve() if u.path else p
            if u.path and not target.exists(): bad.append(f'{where} (no such file)'); continue
            if u.fragment and target.suffix == '.html' and target in pages and u.fragment not in pages[target].ids:
                bad.append(f'{where} (no such anchor)')
    return bad

def mkdocs_config(docs:Path, nav:list)->dict:
    return dict(
        site_name='fastai_bestmodel', site_description="fastai callbacks that save the best model of a run and log it to W&B",
        repo_url=REPO, edit_uri='blob/main/nbs/', docs_dir=str(docs), use_directory_urls=False, strict=True,
        theme=dict(name='material', features=['navigation.sections', 'navigation.top', 'navigation.footer', 'toc.follow',
                                             'search.highlight', 'content.code.copy'],
                   palette=[dict(scheme='default', primary='indigo')], font=False),  # no web fonts: offline
        plugins=['search', 'offline'], extra_css=['extra.css'],
        # the offline plugin would load this shim (search's web worker from file://) from unpkg.com: ours is a copy
        extra=dict(polyfills=['assets/iframe-worker-shim.js']),
        markdown_extensions=['tables', 'admonition', 'attr_list', 'md_in_html', 'def_list', dict(toc=dict(permalink=True)),
                             'pymdownx.highlight', 'pymdownx.superfences', 'pymdownx.inlinehilite'],
        validation=dict(omitted_files='warn', absolute_links='warn', unrecognized_links='warn', anchors='warn',
                        nav=dict(omitted_files='warn', not_found='warn', absolute_links='warn'),
                        links=dict(not_found='warn', absolute_links='warn', unrecognized_links='warn', anchors='warn')),
        nav=nav)

def check_search(site:Path, name='SaveModelCallback'):
    "The search index exists and has an entry whose title is `name`"
    idx = site/'search'/'search_index.json'
    if not idx.exists(): raise SystemExit(f'no search index at {idx}')
    docs = json.loads(idx.read_text())['docs']
    if not any(re.sub(r'<[^>]+>', '', d['title']).strip() == name for d in docs):
        raise SystemExit(f'the search index has no entry for {name}')
    return len(docs)

def build(out:Path):
    mods = sorted(p.name for p in NBS.glob('[0-9][0-9]_*.ipynb'))
    pages = [p for p in PAGES if (NBS/p[0]).exists()] + [(m, None) for m in mods] + ([('benchmarks.ipynb', 'Benchmarks')] if (NBS/'benchmarks.ipynb').exists() else [])
    sys.path.insert(0, str(ROOT)); os.environ.setdefault('WANDB_MODE', 'offline'); os.environ.setdefault('WANDB_SILENT', 'true')
    work = Path(tempfile.mkdtemp(prefix='docs-src-'))
    docs = work/'docs'; docs.mkdir()
    nav, ref = [], []
    for name, title in pages:
        t0 = time.perf_counter()
        t, md, exported = render(NBS/name, docs)
        if (line := shown_source(md, exported)): raise SystemExit(f'{name}: the page shows exported source: {line!r}')
        (docs/page_name(name)).write_text(md)
        (ref if title is None else nav).append({title or t: page_name(name)})
        print(f'{name}: {time.perf_counter()-t0:.1f} s', flush=True)
    nav = nav[:3] + [{'Reference': ref}] + nav[3:]
    if (NBS/'images').is_dir(): shutil.copytree(NBS/'images', docs/'images', dirs_exist_ok=True)
    (docs/'extra.css').write_text(EXTRA_CSS)
    (docs/'assets').mkdir(exist_ok=True); shutil.copy(ROOT/'tools'/'iframe-worker-shim.js', docs/'assets')
    cfg = work/'mkdocs.yml'
    cfg.write_text(json.dumps(mkdocs_config(docs, nav), indent=1))  # JSON is YAML
    t0 = time.perf_counter()
    # not `-q`: strict mode counts the warnings it logs, and `-q` logs none
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--clean', '-f', str(cfg), '-d', str(out.resolve())],
                       capture_output=True, text=True, env={**os.environ, 'NO_COLOR': '1', 'NO_MKDOCS_2_WARNING': '1'})
    if r.returncode:
        said = [l for l in (r.stdout + r.stderr).splitlines() if re.match(r'(WARNING|ERROR|Aborted)', l)] or [r.stdout + r.stderr]
        raise SystemExit('mkdocs build --strict failed (a broken link or image?):\n' + '\n'.join(said))
    if (bad := broken_links(out)): raise SystemExit('broken links or images:\n' + '\n'.join(bad))
    n = check_search(out)
    shutil.rmtree(work)
    print(f'{len(pages)} pages in {out} (mkdocs {time.perf_counter()-t0:.1f} s); {n} search entries, links checked')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default=str(ROOT/'_docs'))
    build(Path(p.parse_args().out))
