"""CPL and MCMT through the model-neutral trainer on a planted Charades-STA store: the batch the trainer feeds has
no timestamp, tiny runs write their metrics and best/, predict -> export -> predict is identical, 8 devices = 1.
"""
import json

import jax
import numpy as np
import pytest

from conftest import assert_same_loss_and_grads, loss_and_grads_on
from amr_jax.metrics import registry as eval_registry
from amr_jax.metrics import weak_mr as weak_metrics
from amr_jax.train import checkpoints, loop, registry, sharding
from amr_jax.train.inference import make_runner
from amr_jax.workflows import weak_chain
from data_pipelines import batches as batch_lib

FORBIDDEN = ('window', 'span', 'timestamp', 'duration', 'gt', 'saliency', 'label', 'moment')
SMALL = {'model.hidden_size': 16, 'model.num_layers1': 1, 'model.num_layers2': 1, 'data.max_num_frames': 32,
         'train.num_steps': 8, 'train.checkpoint_every': 4, 'train.eval_every': 0, 'train.log_every': 4,
         'train.batch_size': 8, 'eval.batch_size': 16}


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  return weak_chain.build_store(tmp_path_factory.mktemp('weak_store'), 80, 24)


@pytest.fixture(scope='module', params=['cpl', 'mcmt'])
def tiny_run(request, store, tmp_path_factory):
  method = request.param
  workdir = tmp_path_factory.mktemp(f'{method}_run')
  config = weak_chain.tiny_run_config(method, store, **SMALL)
  result = loop.train_and_evaluate(config, str(workdir))
  return method, config, workdir, result


def test_the_batch_the_trainer_feeds_has_no_timestamp(store):
  for method in ('cpl', 'mcmt'):
    task = registry.make_task(weak_chain.tiny_run_config(method, store, **SMALL))
    train_data = task.train_data()
    dataset = batch_lib.train_dataset(train_data, seed=0, global_batch=8, start_step=0, num_steps=3,
                                      process_index=0, process_count=1, index_fn=None)
    fed = list(dataset.as_numpy_iterator())
    assert len(fed) == 3
    for batch in fed:
      assert set(batch) == set(train_data.spec)
      bad = [k for k in batch if any(word in k.lower() for word in FORBIDDEN)]
      assert not bad, (method, bad)
      assert set(batch) == {'frames_feat', 'frames_mask', 'words_id', 'words_feat', 'words_mask', 'weights',
                            'sample_valid', 'epoch', 'sample_index'}
      assert batch['epoch'].dtype == np.int32 and batch['epoch'].min() >= 1


@pytest.mark.parametrize('tiny_run', ['cpl', 'mcmt'], indirect=True)
def test_tiny_run_writes_val_scalars_and_best(tiny_run):
  method, _, workdir, result = tiny_run
  assert result['step'] == SMALL['train.num_steps'] and result['step_compiles'] == 1
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('val/R1@0.5' in l for l in lines) and any('loss' in l for l in lines)
  assert (workdir / 'best').is_dir()
  assert (workdir / 'final_params.sha256').read_text().strip() == result['digest']
  assert 0.0 <= result['R1@0.5'] <= 1.0 and 'top1_vote_charades/R1@0.5' in result['evals'] or \
      'val/top1_vote_charades/R1@0.5' in result['evals']
  saved = registry.read_saved(workdir)
  assert saved['task'] == method and saved['dims']['vocab']['words']


@pytest.mark.parametrize('tiny_run', ['cpl', 'mcmt'], indirect=True)
def test_predict_export_predict_is_identical(tiny_run, store, tmp_path):
  _, _, workdir, _ = tiny_run
  run = make_runner(sharding.make_mesh(0))
  task = registry.task_from_saved(workdir)
  params = registry.load_trained_params(str(workdir))
  rows = task.predict(params, task.eval_data(store['val'], store['features']), run, 16)
  export = tmp_path / 'export'
  checkpoints.save_export(export, params, registry.read_saved(workdir))
  exported = registry.task_from_saved(export)     # no training file read: the vocabulary is in the export
  again = exported.predict(registry.load_trained_params(str(export)),
                           exported.eval_data(store['val'], store['features']), run, 16)
  assert rows == again and len(rows) == 24
  path = tmp_path / 'pred.jsonl'
  task.write_predictions(rows, str(path))
  evaluator = eval_registry.get('weak_mr')
  from_file = evaluator.scalars(evaluator.evaluate_files(str(path), store['val']))
  direct = evaluator.scalars(evaluator.evaluate(rows, task.eval_data(store['val'], store['features']).ground_truth))
  assert from_file == {k: v for k, v in direct.items() if '/' not in k}


def test_weak_mr_evaluator_bad_file_is_one_line_per_problem(store, tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text(json.dumps({'qid': 'x', 'pred_windows_sec': 'no'}) + '\n')
  with pytest.raises(weak_metrics.SubmissionError) as info:
    eval_registry.get('weak_mr').evaluate_files(str(path), store['val'])
  assert all('\n' not in p for p in info.value.problems) and len(info.value.problems) >= 2


@pytest.mark.parametrize('method', ['cpl', 'mcmt'])
def test_eight_devices_equal_one(method, store):
  if jax.device_count() < 8:
    pytest.skip('needs XLA_FLAGS=--xla_force_host_platform_device_count=8')
  task = registry.make_task(weak_chain.tiny_run_config(method, store, **SMALL))
  train_data = task.train_data()
  batch = train_data.batch(0, 3, 8)
  params, _ = task.init_params(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(5)
  assert_same_loss_and_grads(loss_and_grads_on(1, task, params, batch, rng),
                             loss_and_grads_on(8, task, params, batch, rng))
