"""The package as PyPI would get it: built by `python -m build` from a copy of the checkout, its wheel and sdist read
back, the wheel installed alone into a new venv and its `fastai-bestmodel` command run from there."""
import hashlib, os, subprocess, sys, site, tarfile, zipfile
try: import tomllib
except ModuleNotFoundError: import tomli as tomllib  # Python 3.10: a dependency of `build` there
from email.parser import Parser
from pathlib import Path
import pytest
from packaging.requirements import Requirement
import fastai_bestmodel

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
NAME, VERSION = 'fastai_bestmodel', fastai_bestmodel.__version__
MODULES = sorted(f'fastai_bestmodel/{p.name}' for p in (ROOT/'fastai_bestmodel').glob('*.py'))
# sha256 of the Apache License 2.0 as apache.org serves it (LICENSE-2.0.txt, md5 3b83ef96387f14655fc854ddc3c6bd57)
APACHE_2_SHA256 = 'cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30'


def run(*cmd, cwd, env=None, timeout=300):
    "Run `cmd`; fail the test with its output unless it exits 0"
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f'{cmd} exited {r.returncode}\n{r.stdout}\n{r.stderr}'
    return r


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    "The sdist and the wheel that `python -m build` makes (the wheel from the sdist) of the checkout's files"
    tmp = tmp_path_factory.mktemp('build')
    # The files git would commit, copied: the build writes build/ and *.egg-info/ into its source, not into ROOT
    files = run('git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard', cwd=ROOT).stdout.split('\0')
    for f in filter(None, files):
        if not (ROOT/f).is_file(): continue  # deleted, not yet committed
        (tmp/'src'/f).parent.mkdir(parents=True, exist_ok=True)
        (tmp/'src'/f).write_bytes((ROOT/f).read_bytes())
    # No isolation: the venv's setuptools (the `dev` extra's, >= 77) builds it, and nothing is downloaded
    run(sys.executable, '-m', 'build', '--no-isolation', '--outdir', tmp/'dist', tmp/'src', cwd=tmp)
    sdist, = (tmp/'dist').glob('*.tar.gz')
    wheel, = (tmp/'dist').glob('*.whl')
    return sdist, wheel


def test_license_is_the_unmodified_apache_2_text():
    assert hashlib.sha256((ROOT/'LICENSE').read_bytes()).hexdigest() == APACHE_2_SHA256
    assert PYPROJECT['license'] == 'Apache-2.0'


def test_wheel_holds_every_module_the_license_and_the_console_script(dists):
    _, wheel = dists
    assert wheel.name == f'{NAME}-{VERSION}-py3-none-any.whl'
    info = f'{NAME}-{VERSION}.dist-info'
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert names == {*MODULES, *(f'{info}/{f}' for f in ['licenses/LICENSE', 'METADATA', 'WHEEL',
                                                              'entry_points.txt', 'top_level.txt', 'RECORD'])}
        assert z.read(f'{info}/licenses/LICENSE') == (ROOT/'LICENSE').read_bytes()
        for m in MODULES: assert z.read(m) == (ROOT/m).read_bytes(), m
        entry_points = z.read(f'{info}/entry_points.txt').decode()
    assert '[console_scripts]\nfastai-bestmodel = fastai_bestmodel.cli:main\n' in entry_points


def test_sdist_holds_every_module_the_license_and_the_changelog_and_no_tests(dists):
    sdist, _ = dists
    top = f'{NAME}-{VERSION}'
    assert sdist.name == f'{top}.tar.gz'
    with tarfile.open(sdist) as t:
        names = {n.removeprefix(f'{top}/') for n in t.getnames() if not n.startswith(f'{top}/{NAME}.egg-info')}
        assert t.extractfile(f'{top}/LICENSE').read() == (ROOT/'LICENSE').read_bytes()
    assert names == {top, 'fastai_bestmodel', *MODULES, 'LICENSE', 'README.md', 'CHANGELOG.md', 'MANIFEST.in',
                     'pyproject.toml', 'setup.cfg', 'PKG-INFO'}


def _metadata(dists):
    "The wheel's METADATA and the sdist's PKG-INFO, parsed"
    sdist, wheel = dists
    with zipfile.ZipFile(wheel) as z: in_wheel = z.read(f'{NAME}-{VERSION}.dist-info/METADATA').decode()
    with tarfile.open(sdist) as t: in_sdist = t.extractfile(f'{NAME}-{VERSION}/PKG-INFO').read().decode()
    return [Parser().parsestr(m) for m in (in_wheel, in_sdist)]


def test_metadata_says_what_pyproject_says_and_the_package_version(dists):
    deps = {str(Requirement(d)) for d in PYPROJECT['dependencies']}
    deps |= {f'{Requirement(d)}; extra == "{x}"' for x, ds in PYPROJECT['optional-dependencies'].items() for d in ds}
    for m in _metadata(dists):
        assert (m['Name'], m['Version'], m['License-Expression']) == ('fastai_bestmodel', VERSION, 'Apache-2.0')
        assert m.get_all('License-File') == ['LICENSE']
        assert m['Requires-Python'] == PYPROJECT['requires-python'] == '>=3.10'
        assert set(m.get_all('Requires-Dist')) == deps
        assert 'torch>=2.5' in deps and 'build; extra == "dev"' in deps
        assert m.get_all('Classifier') == PYPROJECT['classifiers']
        assert not [c for c in m.get_all('Classifier') if c.startswith('License ::')]  # the SPDX field says it
        # no Documentation URL until a docs site is published (pyproject.toml says why)
        assert dict(u.split(', ') for u in m.get_all('Project-URL')).keys() == {'Homepage', 'Repository', 'Issues',
                                                                                 'Changelog'}


def _venv_seeing_this_ones_packages(path:Path)->Path:
    "A new venv at `path` whose Python also imports what this Python's site-packages hold; returns its site-packages"
    run(sys.executable, '-m', 'venv', '--without-pip', path, cwd=path.parent)
    purelib = Path(run(path/'bin/python', '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))',
                       cwd=path.parent).stdout.strip())
    # A path on each line, not `import site; site.addsitedir(...)`: those folders' own .pth files are not run, and so
    # neither is the editable install's finder, which would import fastai_bestmodel from a source tree. torch, fastai
    # and pip come from there, and are neither installed again nor downloaded
    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib/'test_venv.pth').write_text(''.join(f'{d}\n' for d in dirs if Path(d).is_dir()))
    return purelib


def test_the_wheel_installed_alone_runs_fastai_bestmodel_from_its_own_venv(dists, tmp_path):
    _, wheel = dists
    venv, cwd = tmp_path/'venv', tmp_path/'cwd'
    cwd.mkdir()
    purelib = _venv_seeing_this_ones_packages(venv)
    # Not this checkout's code on the path, nor this process's W&B service
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'WANDB_SERVICE')}
    env.update(WANDB_MODE='offline', WANDB_SILENT='true', PIP_DISABLE_PIP_VERSION_CHECK='1')
    run(venv/'bin/python', '-m', 'pip', 'install', '--no-deps', '--no-index', '--ignore-installed', wheel, cwd=cwd,
        env=env)
    assert {p.name for p in purelib.iterdir()} == {'fastai_bestmodel', f'{NAME}-{VERSION}.dist-info', 'test_venv.pth'}
    script = venv/'bin/fastai-bestmodel'
    assert script.read_text().splitlines()[0] == f'#!{venv}/bin/python'

    # Every module of the package is imported from the new venv: none from the checkout, none from another install
    names = [m.removesuffix('.py').replace('/', '.').removesuffix('.__init__') for m in MODULES]
    files = run(venv/'bin/python', '-c', 'import importlib, sys; '
                'print(*(importlib.import_module(n).__file__ for n in sys.argv[1:]), sep="\\n")', *names,
                cwd=cwd, env=env).stdout.split()
    assert files == [str(purelib/m) for m in MODULES]

    r = run(script, '--help', cwd=cwd, env=env)
    assert r.stdout.startswith('usage: fastai-bestmodel ') and 'demo' in r.stdout
    r = run(script, 'demo', '--epochs', '1', cwd=cwd, env=env)
    assert 'best epoch: epoch 0, ' in r.stdout, r.stdout
    saved = cwd/'bestmodel_demo/models'
    assert (saved/'model.pth').is_file() and (saved/'model.json').is_file()
