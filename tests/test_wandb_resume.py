"""An offline W&B run resumed with the same id: what the earlier part logged is not logged again."""
from pathlib import Path
import wandb
from fastai.test_utils import synth_learner
from fastai_bestmodel.tracker import SaveModelCallback
from fastai_bestmodel.test_utils import ScriptedMetric
from fastai_bestmodel.wandb import WandbCallback
from fastai_bestmodel.offline import OfflineRun, read_offline_run

SCORES = [0.9, 0.5, 0.95, 0.6, 0.97, 0.3]  # the first part trains epochs 0-2, the resumed part 3-5


def _part(path, wandb_dir, start_epoch, resume):
    "One part of the run: a new process would build all of this anew, and W&B offline restores no summary"
    run = wandb.init(project='fastai-bestmodel-tests', mode='offline', dir=wandb_dir, id='resumed-run', resume='allow')
    learn = synth_learner(n_trn=2, path=path, metrics=ScriptedMetric(SCORES, 'accuracy'))
    learn.fit(start_epoch + 3, lr=1e-2, start_epoch=start_epoch,
              cbs=[SaveModelCallback(monitor='accuracy', save_top_k=2, resume=resume), WandbCallback(log_model='all', log_preds=False)])
    run.finish()
    return read_offline_run(Path(run.dir).parent)


def _weights(art): return next(f['digest'] for f in art['files'] if f['path'].endswith('.pth'))


def test_a_resumed_offline_run_logs_no_taken_up_checkpoint_again(tmp_path):
    first = _part(tmp_path, tmp_path, 0, resume=False)
    second = _part(tmp_path, tmp_path, 3, resume=True)  # takes up epoch 2 (the best) and epoch 0 (top 2)
    earlier = {_weights(a) for a in first.artifacts}
    assert [a['metadata']['epoch'] for a in first.artifacts] == [0, 1, 2]
    # The resumed part logs only weights it trained: epoch 4's new best
    assert [(a['metadata']['epoch'], _weights(a) in earlier) for a in second.artifacts] == [(4, False)]
    # After `wandb sync` of both parts, no weights are in two versions
    versions = OfflineRun(path=second.path, artifacts=first.artifacts + second.artifacts).versions('run-resumed-run-model')
    assert len(versions) == len({_weights(v) for v in versions}) == 4
    assert [(v['metadata']['epoch'], 'best' in v['aliases']) for v in versions] == [(0, False), (1, False), (2, False), (4, True)]


def test_a_resumed_offline_run_without_the_earlier_log_says_so(tmp_path, capsys):
    "W&B offline keeps no summary between the parts: without the first part's log beside it, the callback cannot know"
    _part(tmp_path, tmp_path / 'first', 0, resume=False)
    capsys.readouterr()
    _part(tmp_path, tmp_path / 'second', 3, resume=True)
    out = capsys.readouterr().out
    assert out.count('no log of an earlier part of run resumed-run') == 1, out
