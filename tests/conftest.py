import os, sys
from pathlib import Path
import pytest, torch
from fastai_bestmodel.test_utils import KeepWeights  # noqa: F401  (the tests import it from here)

os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('WANDB_SILENT', 'true')
ROOT = Path(__file__).resolve().parent.parent


def assert_same_weights(a, b):
    assert set(a) == set(b)
    for k in a: assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.fixture
def offline_run(tmp_path):
    "A W&B run in offline mode, in `tmp_path`; yields the run, finished afterwards"
    import wandb
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=tmp_path)
    yield run
    if wandb.run is not None: wandb.run.finish()


def python_env():
    "The environment for a child Python that imports this checkout's package"
    # Not this process's W&B service (`wandb.init` sets WANDB_SERVICE): a child killed mid-run would leave its run open there
    env = {k: v for k, v in os.environ.items() if k != 'WANDB_SERVICE'}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    return env
