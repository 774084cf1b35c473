"""A restarted run never silently replaces a better model: each run here is its own process, as a restarted job is."""
import json, subprocess, sys
from pathlib import Path
from fastai_bestmodel.checkpoint import list_checkpoints, load_checkpoint
from conftest import python_env

HERE = Path(__file__).parent


def _run(folder, **opts):
    out = subprocess.run([sys.executable, str(HERE / 'resume_child.py'), str(folder), json.dumps(opts)],
                         capture_output=True, text=True, env=python_env(), timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _on_disk(folder):
    "{file name: the run * 100 + epoch its weights hold}, each loaded with its digest checked"
    return {p.with_suffix('.pth').name: load_checkpoint(p)[0]['a'].item() for p, _ in list_checkpoints(folder / 'models')}


def test_a_resumed_run_keeps_the_earlier_best_unless_it_beats_it(tmp_path):
    first = _run(tmp_path, run=1, scores=[0.5, 0.9, 0.8], save_top_k=2, filename='{epoch}-{accuracy:.2f}')
    assert first['kept'] == {'model.pth': 0.9, 'epoch=2-accuracy=0.80.pth': 0.8}
    before = (tmp_path / 'models' / 'model.pth').read_bytes()
    second = _run(tmp_path, run=2, scores=[0.6, 0.85, 0.7], save_top_k=2, filename='{epoch}-{accuracy:.2f}', resume=True)
    assert (tmp_path / 'models' / 'model.pth').read_bytes() == before  # 0.85 < 0.9: the first run's best stays
    assert second['kept'] == {'model.pth': 0.9, 'epoch=1-accuracy=0.85.pth': 0.85}  # 0.85 pushed the first run's 0.8 out
    assert _on_disk(tmp_path) == {'model.pth': 101.0, 'epoch=1-accuracy=0.85.pth': 201.0}
    assert (second['best'], second['best_epoch'], second['holds']) == (0.9, 1, 101.0)  # the learner holds the best of both runs
    assert not second['warnings']


def test_a_new_run_says_it_will_replace_an_earlier_best_and_does(tmp_path):
    _run(tmp_path, run=1, scores=[0.5, 0.9])
    second = _run(tmp_path, run=2, scores=[0.6, 0.7])
    (w,) = [w for w in second['warnings'] if 'did not write' in w]
    assert 'model.pth' in w and 'accuracy 0.9' in w and 'resume=True' in w
    assert _on_disk(tmp_path) == {'model.pth': 201.0}  # fastai's meaning: the new run's best replaces it
