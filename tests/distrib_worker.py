"""One process of a 2-process fastai fit on the CPU, started by torchrun (see test_distributed.py)."""
import json, os, sys
from pathlib import Path
import torch
from fastai.distributed import DistributedDL
from fastai.test_utils import synth_learner
import fastai_bestmodel.writer as writer  # the writer calls save_checkpoint for the tracker
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from fastai_bestmodel.wandb import WandbCallback
from conftest import KeepWeights  # this file's folder is on sys.path: torchrun runs it as a script

# fastai's DistributedDL._broadcast moves the tensor it broadcasts to CUDA, as NCCL needs; there is no GPU here and gloo
# broadcasts CPU tensors, so this one method is replaced by the same broadcast on the CPU.
def _broadcast_on_cpu(self, t, rank):
    t = torch.LongTensor(t)
    torch.distributed.broadcast(t, rank)
    return t.tolist()
DistributedDL._broadcast = _broadcast_on_cpu

out, rank = Path(sys.argv[1]), int(os.environ['RANK'])
separate = len(sys.argv) > 2 and sys.argv[2] == 'separate'  # each process its own folder, as on two machines
# A spy, not a double: it records which process writes, then calls the real writer
_real_save = writer.save_checkpoint
def _recording_save(*args, **kwargs):
    with open(out / f'writes-{rank}.txt', 'a') as f: f.write(f'{args[0]}\n')
    return _real_save(*args, **kwargs)
writer.save_checkpoint = _recording_save

# Each process sees a different score, as each computes metrics on its own shard: rank 0's best epoch is 1, rank 1's is 0
scores = [0.2, 0.9, 0.5] if rank == 0 else [0.95, 0.1, 0.5]
learn = synth_learner(n_trn=8, n_val=4, path=out / f'machine{rank}' if separate else out, metrics=ScriptedMetric(scores, 'accuracy'))
if rank == 0:
    import wandb
    wandb.init(project='fastai-bestmodel-distributed', mode='offline', dir=out)
keep, save = KeepWeights(), SaveModelCallback(monitor='accuracy')
with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging():
    learn.fit(3, lr=0.1, cbs=[save, WandbCallback(log_model=True, log_preds=False), keep])
if rank == 0: wandb.finish()
final = learn.model.state_dict()
holds = [all(torch.equal(final[k], w[k]) for k in final) for w in keep.weights]
(out / f'result-{rank}.json').write_text(json.dumps(dict(best_epoch=save.best_epoch, metadata=save.last_saved_metadata, holds_epoch=holds)))
torch.save(keep.weights, out / f'weights-{rank}.pt')
