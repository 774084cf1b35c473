import os, sys
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback
from fastai.torch_core import get_model

os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('WANDB_SILENT', 'true')
ROOT = Path(__file__).resolve().parent.parent


class KeepWeights(Callback):
    "Copies of the weights at the end of each epoch, taken after the tracker has saved them (unwrapped in distributed training)"
    order = 70
    def before_fit(self): self.weights = []
    def after_epoch(self): self.weights.append({k: v.detach().clone() for k, v in get_model(self.model).state_dict().items()})


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
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    return env
