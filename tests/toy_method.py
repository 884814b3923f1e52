"""A minimal method registered from a test module: linear regression behind the task contract.

It proves the generic paths (trainer, evaluators, export, Predictor, launch scripts) need no edit for a new method.
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from amr_jax import task as task_lib
from amr_jax.metrics.base import Evaluator
from data_pipelines.batches import local_slice, uniform_indices

DIM = 6


def write_split(path, n: int, seed: int) -> None:
  """One jsonl row per sample: {'id', 'x': [DIM], 'y'} with y = x . w (w fixed)."""
  rng = np.random.default_rng(seed)
  w = np.arange(1, DIM + 1, dtype=np.float64) / DIM
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(n):
      x = rng.normal(size=DIM)
      f.write(json.dumps({'id': i, 'x': x.tolist(), 'y': float(x @ w)}) + '\n')


def read_split(path):
  rows = [json.loads(line) for line in open(path, encoding='utf-8')]
  return (np.array([r['id'] for r in rows], np.int32), np.array([r['x'] for r in rows], np.float32),
          np.array([r['y'] for r in rows], np.float32))


class ToyTrainData(task_lib.TrainData):
  def __init__(self, path):
    self.ids, self.x, self.y = read_split(path)
    self.spec = task_lib.spec_of(self.batch(0, 0, 2))

  def __len__(self):
    return len(self.ids)

  def batch(self, seed, step, global_batch, process_index=0, process_count=1, indices=None):
    idx = uniform_indices(seed, step, len(self), global_batch) if indices is None else indices
    idx = idx[local_slice(global_batch, process_index, process_count)]
    return {'x': self.x[idx], 'y': self.y[idx]}


class ToyEvalData(task_lib.EvalData):
  def __init__(self, path, with_labels):
    self.ids, self.x, y = read_split(path)
    self.ground_truth = {int(i): float(v) for i, v in zip(self.ids, y)} if with_labels else None
    self.spec = task_lib.spec_of(next(self.batches(2)))

  def __len__(self):
    return len(self.ids)

  def batches(self, batch_size, process_index=0, process_count=1):
    for start in range(0, len(self), batch_size):
      idx = np.arange(start, start + batch_size)
      valid = (idx < len(self)).astype(np.float32)
      idx = np.minimum(idx, len(self) - 1)[local_slice(batch_size, process_index, process_count)]
      yield {'x': self.x[idx], 'id': self.ids[idx],
             'sample_valid': valid[local_slice(batch_size, process_index, process_count)]}


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, D] -> [B]
    return nn.Dense(1)(x)[:, 0]


class ToyTask(task_lib.Task):
  name = 'toy'

  def __init__(self, config, dims=None):
    super().__init__(config, dims)
    self.model = Linear()

  def train_data(self):
    self.dims = {'x_dim': DIM}
    return ToyTrainData(self.config.data.train_annotations)

  def eval_data(self, annotations, feature_dir, *, with_labels=True, **_):
    del feature_dir
    return ToyEvalData(annotations, with_labels)

  def init_params(self, rng, example_batch, teacher_params=None):
    return self.model.init(rng, jnp.asarray(example_batch['x']))['params'], None

  def loss(self, params, frozen_params, batch, rng):
    pred = self.model.apply({'params': params}, batch['x'])
    mse = jnp.mean(jnp.square(pred - batch['y']))
    return mse, {'loss/mse': mse}

  def optimizer(self, steps_per_epoch, num_steps):
    return optax.adam(self.config.optim.lr)

  def eval_forward(self, params, batch):
    return {'pred': self.model.apply({'params': params}, batch['x'])}

  def postprocess(self, host_outputs, host_batch):
    return [{'id': int(i), 'pred': float(p)} for i, p in zip(host_batch['id'], host_outputs['pred'])]


class ToyMSE(Evaluator):
  """-MSE of the predictions (higher is better), so eval.best_metric can pick the best checkpoint."""

  def evaluate(self, predictions, ground_truth):
    err = [(row['pred'] - ground_truth[row['id']]) ** 2 for row in predictions]
    return {'neg_mse': -float(np.mean(err)), 'count': len(err)}

  def evaluate_files(self, submission_path, annotations_path):
    rows = [json.loads(line) for line in open(submission_path, encoding='utf-8')]
    ids, _, y = read_split(annotations_path)
    return self.evaluate(rows, dict(zip(ids.tolist(), y.tolist())))

  def scalars(self, result):
    return dict(result)


TASK = ToyTask


def get_config(train_path: str, val_path: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'tests.toy_method'
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(train_annotations=train_path, val_annotations=val_path, feature_dir=''))
  c.optim = ml_collections.ConfigDict(dict(lr=0.05))
  c.train = ml_collections.ConfigDict(dict(num_epochs=1, num_steps=60, batch_size=8, num_devices=0,
                                           checkpoint_every=20, keep_checkpoints=2, eval_every=20, log_every=10,
                                           max_bad_steps=3, inject_nan_at_step=-1, overwrite=False))
  c.eval = ml_collections.ConfigDict(dict(batch_size=16, best_metric='val/neg_mse', best_mode='max'))
  c.evals = ml_collections.ConfigDict({'val': {'type': 'tests.toy_method:ToyMSE'}})
  c.init = ml_collections.ConfigDict(dict(stage1_workdir=''))
  return c
