"""The links the package gives its readers lead somewhere: each module's docstring, as `help()` and nbdev's `doc()`
show it, and `nbs/llms.txt` name a notebook of this repository, never a `.html.md` page of a site not published."""
import ast, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO = 'https://github.com/fastai-bestmodel/fastai_bestmodel/blob/main/'
MODULES = sorted(p for p in (ROOT / 'fastai_bestmodel').glob('*.py') if not p.name.startswith('_'))


@pytest.mark.parametrize('module', MODULES, ids=lambda p: p.stem)
def test_module_docstring_links_to_its_notebook(module):
    doc = ast.get_docstring(ast.parse(module.read_text())) or ''
    urls = re.findall(r'https?://\S+', doc)
    assert urls, f'{module.name}: no Docs: link'
    for url in urls:
        assert '.html.md' not in url, url
        assert url.startswith(REPO) and (ROOT / url[len(REPO):]).exists(), f'{module.name}: {url} is no file of the repository'


def test_llms_txt_links_exist():
    for url in re.findall(r'\]\((https?://[^)]+)\)', (ROOT / 'nbs' / 'llms.txt').read_text()):
        assert url.startswith(REPO) and (ROOT / url[len(REPO):]).exists(), url


def test_readme_links_are_absolute_and_name_files_of_the_repository():
    "PyPI shows the README alone: a relative link there leads nowhere"
    text = (ROOT / 'README.md').read_text()
    links = re.findall(r'\]\(([^)]+)\)', text)
    assert links and not [l for l in links if not l.startswith(('http://', 'https://', '#'))], links
    raw = REPO.replace('/blob/', '/raw/')
    for url in links:
        for prefix in (REPO, raw):
            if url.startswith(prefix): assert (ROOT / url[len(prefix):]).exists(), url
