"""Write README.md from nbs/index.ipynb with nbconvert's markdown exporter (Quarto, which `nbdev-readme` needs, cannot be installed here)."""
import re, sys
from pathlib import Path
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import Preprocessor

class _DropHidden(Preprocessor):
    "Drop `#| hide` cells and nbdev's `#|` directive lines"
    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and '#| hide' in c.source)]
        for c in nb.cells:
            if c.cell_type == 'code': c.source = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|'))
        return nb, resources

REPO = 'https://github.com/fastai-bestmodel/fastai_bestmodel'  # as pyproject.toml's Repository

def _absolute(md:str)->str:
    "Links and images to the repository's files made absolute: PyPI shows the README without the repository beside it"
    md = re.sub(r'!\[([^\]]*)\]\((?!https?:|#)([^)]+)\)', lambda m: f'![{m[1]}]({REPO}/raw/main/{m[2]})', md)
    return re.sub(r'(?<!!)\[([^\]]*)\]\((?!https?:|#)([^)]+)\)', lambda m: f'[{m[1]}]({REPO}/blob/main/{m[2]})', md)

def readme(root='.'):
    root = Path(root)
    exporter = MarkdownExporter()
    exporter.register_preprocessor(_DropHidden(), enabled=True)
    body, _ = exporter.from_filename(str(root/'nbs'/'index.ipynb'))
    return _absolute(body.strip()) + '\n'

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    text = readme(root)
    if '--check' in sys.argv:
        if (root/'README.md').read_text() != text: sys.exit('README.md is not what nbs/index.ipynb makes: run `python tools/make_readme.py` and commit it.')
        print('README.md is current.')
    else: (root/'README.md').write_text(text)
