"""fastai callbacks that save the best model of a run and log it to W&B with its own epoch's metrics

Modules:

- `fastai_bestmodel.all`: `from fastai_bestmodel.all import *` brings what a user writes in a notebook, as fastai's `*.all` modules do: the callbacks, loading, resuming, the report and W&B uploads.
- `fastai_bestmodel.artifacts`: Log checkpoints to W&B as `model` artifact versions with their own epoch's metrics; download, prune and link them. Needs W&B, not fastai.
- `fastai_bestmodel.checkpoint`: The format of one checkpoint: weights and a `.json` beside them, written atomically, read by one normalising reader, a digest checked on load; the table of reasons a checkpoint is saved for.
- `fastai_bestmodel.cli`: `fastai-bestmodel demo`: a real training run on a bundled dataset, logged to W&B offline; `show`: what a checkpoint is; `log`, `prune`, `link`: W&B uploads after the fact.
- `fastai_bestmodel.durable`: The file-system helpers every checkpoint write goes through: temporary files, fsync, a digest computed while writing, atomic replacement, a folder lock.
- `fastai_bestmodel.learner`: Every change this package makes to fastai (and to SIGTERM during a fit), in one place, each guarded by the fastai versions it was checked with; and loading a checkpoint into a `Learner`.
- `fastai_bestmodel.offline`: Read back what a W&B run in offline mode recorded: artifacts, summary and history, before anything is uploaded.
- `fastai_bestmodel.options`: The arguments of `SaveModelCallback`, checked when it is made, each error naming the argument; which direction of a monitor is better, from the learner's metric; an epoch's row of values; what a tracker says at the end of a fit.
- `fastai_bestmodel.policies`: What a tracker remembers of each save (`SaveRecord`), and the rules that choose what to save and keep: pure functions over lists of records, with no fastai and no files.
- `fastai_bestmodel.provenance`: What a reader needs to trust or reproduce a checkpoint: the versions, the model, the optimizer, the loss, the data and the commit it was trained from.
- `fastai_bestmodel.report`: See what a fit kept at a glance: a table of its checkpoints, the best model beside the last epoch, and a plot of the monitored value with every save marked.
- `fastai_bestmodel.resume`: Carry on a training: exactly, from a checkpoint with the optimizer state (`resume_training`), and by taking up the checkpoints an earlier run left (`SaveModelCallback(resume=True)`).
- `fastai_bestmodel.test_utils`: What the tests and the examples train on: a metric whose values are scripted in advance, copies of the weights of each epoch, and a small real dataset that ships with scikit-learn.
- `fastai_bestmodel.tracker`: `SaveModelCallback`: fastai's, deciding when to save and keeping a record of each save, with the metrics of the epoch it saved written beside the weights.
- `fastai_bestmodel.wandb`: `WandbCallback`: fastai's, logging the best model with the metrics of the epoch whose weights it holds, read from the trackers' records.
- `fastai_bestmodel.writer`: Hand a checkpoint save to a writer: in the calling thread, or in the background while training goes on; none is ever dropped, and each job tells its caller what it wrote."""

__version__ = "0.1.0"
