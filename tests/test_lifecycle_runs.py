"""The workdir lifecycle through the real trainer (on the toy method, so each run takes seconds).

Finished reruns exit at once, a missing digest is repaired, an incompatible rerun refuses without touching the
record, a held lock refuses, overwrite archives, and a failed run is recorded as failed.
"""
import json
import sys

import pytest

from conftest import ROOT


@pytest.fixture()
def toy(tmp_path):
  sys.path.insert(0, str(ROOT))  # tests/ is not an installed package
  from tests import toy_method  # pylint: disable=import-outside-toplevel
  toy_method.write_split(tmp_path / 'train.jsonl', 48, 0)
  toy_method.write_split(tmp_path / 'val.jsonl', 16, 1)

  def config(**overrides):
    c = toy_method.get_config(str(tmp_path / 'train.jsonl'), str(tmp_path / 'val.jsonl'))
    c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = 12, 6, 6
    for key, value in overrides.items():
      node = c
      *path, leaf = key.split('.')
      for part in path:
        node = node[part]
      node[leaf] = value
    return c

  return tmp_path, config


def test_a_finished_run_is_not_trained_again_and_its_digest_is_repaired(toy):
  from amr_jax.train import loop
  root, config = toy
  first = loop.train_and_evaluate(config(), str(root / 'run'))
  lines = (root / 'run' / 'metrics.jsonl').read_text()
  again = loop.train_and_evaluate(config(), str(root / 'run'))
  assert again['already_finished'] and again['step'] == 12 and again['digest'] == first['digest']
  assert again['neg_mse'] == first['neg_mse']                       # the recorded evals come back
  assert (root / 'run' / 'metrics.jsonl').read_text() == lines     # nothing appended
  (root / 'run' / 'final_params.sha256').unlink()                  # killed between checkpoint and digest
  state = json.loads((root / 'run' / 'state.json').read_text())
  state.pop('digest', None)
  (root / 'run' / 'state.json').write_text(json.dumps(state))
  repaired = loop.train_and_evaluate(config(), str(root / 'run'))
  assert (root / 'run' / 'final_params.sha256').read_text().strip() == first['digest'] == repaired['digest']
  attempts = [json.loads(l) for l in (root / 'run' / 'attempts.jsonl').read_text().splitlines()]
  assert [a['outcome'].split(' at ')[0] for a in attempts] == ['finished', 'already finished', 'already finished']


def test_an_incompatible_rerun_refuses_and_leaves_the_record(toy):
  from amr_jax.train import loop, workdir
  root, config = toy
  loop.train_and_evaluate(config(), str(root / 'run'))
  record = (root / 'run' / 'config.json').read_text()
  with pytest.raises(workdir.WorkdirError, match=r'optim\.lr 0\.05 -> 0\.01'):
    loop.train_and_evaluate(config(**{'optim.lr': 0.01}), str(root / 'run'))
  assert (root / 'run' / 'config.json').read_text() == record
  longer = loop.train_and_evaluate(config(**{'train.num_steps': 18}), str(root / 'run'))   # extending is fine
  assert longer['step'] == 18 and not longer.get('already_finished')
  fresh = loop.train_and_evaluate(config(**{'optim.lr': 0.01, 'train.overwrite': True}), str(root / 'run'))
  assert fresh['step'] == 12
  archived = list((root / 'run' / 'archive').iterdir())
  assert len(archived) == 1 and (archived[0] / 'config.json').exists()


def test_a_workdir_being_trained_is_refused(toy):
  from amr_jax.train import loop, workdir
  root, config = toy
  (root / 'run').mkdir()
  with workdir.RunLock(root / 'run'):
    with pytest.raises(workdir.WorkdirError, match='is being trained by pid'):
      loop.train_and_evaluate(config(), str(root / 'run'))


def test_a_failed_run_is_recorded_and_resumes(toy):
  from amr_jax.train import loop
  root, config = toy
  bad = config(**{'train.inject_nan_at_step': 7, 'train.max_bad_steps': 1})
  with pytest.raises(loop.TrainingError, match='last good checkpoint: .*checkpoints/6'):
    loop.train_and_evaluate(bad, str(root / 'run'))
  state = json.loads((root / 'run' / 'state.json').read_text())
  assert state['status'] == 'failed' and 'TrainingError' in state['reason']
