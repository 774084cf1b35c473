"""The package's layout, read from its code: imports run one way, from the checkpoint format up to the CLI; fastai is
changed in one module only; the callback modules hold their callbacks. Issue 22's checks."""
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parent.parent / 'fastai_bestmodel'
# The reading order: each module may import only modules before it, at its top or inside a function
ORDER = ['durable', 'checkpoint', 'writer', 'provenance', 'policies', 'options', 'offline', 'artifacts', 'learner',
         'resume', 'tracker', 'wandb', 'report', 'test_utils', 'cli', 'all']


def _tree(name): return ast.parse((PKG / f'{name}.py').read_text())


def _walk(tree):
    "Every node of `tree` but those of a module's `__getattr__`, whose imports serve old names moved elsewhere"
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef) and node.name == '__getattr__': continue
        yield node
        yield from _walk(node)


def _imports(name)->set:
    "The package's modules `name` imports, anywhere in its code (but for the deprecation of moved names)"
    found = set()
    for node in _walk(_tree(name)):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: found |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
            elif mod == 'fastai_bestmodel': found |= {a.name for a in node.names}  # modules, or `__version__`
            elif mod.startswith('fastai_bestmodel.'): found.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('fastai_bestmodel.')}
    return (found & set(ORDER)) - {name}  # the package's modules (not `__version__`, its own attribute)


def test_every_module_is_in_the_reading_order():
    modules = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    assert modules == set(ORDER), f'not in ORDER: {modules - set(ORDER)}; gone: {set(ORDER) - modules}'


@pytest.mark.parametrize('name', ORDER)
def test_imports_run_one_way_from_the_format_up(name):
    later = sorted(m for m in _imports(name) if ORDER.index(m) > ORDER.index(name))
    assert not later, f'{name} imports {later}, which come after it: an import against the flow (or a cycle)'


def test_artifacts_needs_no_fastai():
    names = {n.module or '' for n in ast.walk(_tree('artifacts')) if isinstance(n, ast.ImportFrom)}
    names |= {a.name for n in ast.walk(_tree('artifacts')) if isinstance(n, ast.Import) for a in n.names}
    assert not [n for n in names if n.split('.')[0] == 'fastai'], names


def _ours()->set:
    "The classes this package defines"
    return {n.name for m in ORDER for n in ast.walk(_tree(m)) if isinstance(n, ast.ClassDef)}


@pytest.mark.parametrize('name', [m for m in ORDER if m != 'learner'])
def test_fastai_is_changed_only_in_the_learner_module(name):
    "No `@patch` of a class not ours, no assignment to an attribute of fastai's classes or modules, outside `learner`"
    ours, tree = _ours(), _tree(name)
    fastai_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('fastai.')
                    for a in n.names} | {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                                         for a in n.names if a.name.startswith('fastai.')}
    bad = []
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef) and any(getattr(d, 'id', getattr(getattr(d, 'func', None), 'id', None)) == 'patch' for d in n.decorator_list):
            ann = n.args.args[0].annotation if n.args.args else None
            if getattr(ann, 'id', None) not in ours: bad.append(f'@patch {n.name} on {getattr(ann, "id", ann)}')
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id in fastai_names - ours:
                    bad.append(f'{e.value.id}.{e.attr} = ...')
        if isinstance(n, ast.Call) and getattr(n.func, 'id', None) == 'setattr' and getattr(n.args[0], 'id', None) in fastai_names:
            bad.append(f'setattr({n.args[0].id}, ...)')
    assert not bad, f'{name} changes fastai: {bad}'


def test_wandb_holds_the_callback_only():
    tree = _tree('wandb')
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ['WandbCallback'], classes
    src = (PKG / 'wandb.py').read_text()
    assert "__all__ = ['WandbCallback']" in src


def test_no_module_is_over_a_quarter_of_the_package():
    lines = {m: len((PKG / f'{m}.py').read_text().splitlines()) for m in ORDER}
    total = sum(lines.values())
    assert max(lines.values()) <= total / 4, {m: f'{n} of {total}' for m, n in lines.items() if n > total / 4}
