"""fastai distributed training (Accelerate, torch.distributed with gloo) in two processes on the CPU."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from fastai_bestmodel.offline import read_offline_run
from fastai_bestmodel.checkpoint import load_checkpoint
from conftest import python_env, assert_same_weights

HERE = Path(__file__).parent


def _launch(tmp_path, *args):
    pytest.importorskip('accelerate')
    env = {**python_env(), 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
           str(HERE / 'distrib_worker.py'), str(tmp_path), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_only_rank0_writes_and_every_rank_ends_with_the_same_best(tmp_path):
    _launch(tmp_path)
    results = [json.loads((tmp_path / f'result-{r}.json').read_text()) for r in (0, 1)]
    # Every rank agrees with rank 0: epoch 1 is the best, though rank 1's own scores would say epoch 0
    assert [r['best_epoch'] for r in results] == [1, 1]
    assert results[0]['metadata'] == results[1]['metadata'] and results[0]['metadata']['accuracy'] == 0.9
    # Every rank ends the fit holding the best epoch's weights (load_best=True), not the last epoch's
    assert [r['holds_epoch'] for r in results] == [[False, True, False]] * 2
    # Only rank 0 wrote
    assert (tmp_path / 'writes-0.txt').read_text().count('\n') == 2  # epochs 0 and 1 improved
    assert not (tmp_path / 'writes-1.txt').exists()
    state, desc = load_checkpoint(tmp_path / 'models' / 'model.pth')
    assert desc['metadata']['epoch'] == 1
    assert_same_weights(state, torch.load(tmp_path / 'weights-0.pt')[1])
    # One W&B run, from rank 0, with one model artifact: epoch 1's
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1
    models = [a for a in read_offline_run(runs[0]).artifacts if a['type'] == 'model']
    assert len(models) == 1 and models[0]['metadata']['epoch'] == 1


def test_without_a_shared_folder_every_rank_gets_the_best_from_rank0(tmp_path):
    _launch(tmp_path, 'separate')  # each process its own model folder, as two machines have
    results = [json.loads((tmp_path / f'result-{r}.json').read_text()) for r in (0, 1)]
    assert [r['holds_epoch'] for r in results] == [[False, True, False]] * 2  # rank 1 never read a file: rank 0 sent it
    assert (tmp_path / 'machine0' / 'models' / 'model.pth').exists() and not list((tmp_path / 'machine1').rglob('*.pth'))
    state, desc = load_checkpoint(tmp_path / 'machine0' / 'models' / 'model.pth')
    assert desc['metadata']['epoch'] == 1
    assert_same_weights(state, torch.load(tmp_path / 'weights-1.pt')[1])  # rank 1's own copy of epoch 1's weights
