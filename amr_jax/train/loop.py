"""The training loop: data, pre-flight validation, mesh, jitted step, eval, checkpoints, logs, resume.

`train_and_evaluate(config, workdir)` is what `launch/train.py` calls; tests call it directly.
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from amr_jax import predict as predict_lib
from amr_jax.data import annotations as ann_lib
from amr_jax.data import features as feat_lib
from amr_jax.data import validate as validate_lib
from amr_jax.train import checkpoints as ckpt_lib
from amr_jax.train import sharding
from amr_jax.train.logging import MetricLogger, Progress
from amr_jax.train.state import TrainState, make_train_step, params_digest
from data_pipelines import batches as batch_lib
from data_pipelines.examples import PadSpec


class TrainingError(RuntimeError):
  """A run that must stop with a clear one-line reason (bad data, non-finite loss streak, ...)."""


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def load_records(paths: str, subset: int = 0):
  records = ann_lib.load_many(paths)
  return records[:subset] if subset else records


def open_store(config):
  return feat_lib.FeatureStore(config.data.feature_dir, max_v_l=config.data.max_v_l)


def preflight(records, store, config, what: str):
  """Validate every record against the store before any compute; report every problem at once."""
  problems = validate_lib.validate(records, store, max_v_l=config.data.max_v_l)
  if not problems:
    return records
  if config.data.drop_bad:
    kept, dropped = validate_lib.drop_bad(records, problems)
    print(f'[{what}] dropped {len(dropped)} bad samples: ' + ', '.join(str(r.qid) for r in dropped[:20]),
          file=sys.stderr)
    if not kept:
      raise TrainingError(f'{what}: every sample was dropped by validation')
    return kept
  lines = '\n'.join(str(p) for p in problems)
  raise TrainingError(f'{what}: {len(problems)} data problem(s) (set --config.data.drop_bad=True to drop):\n'
                      + lines)


def pad_spec(config, store) -> PadSpec:
  return PadSpec(max_v_l=config.data.max_v_l, max_q_l=config.data.max_q_l,
                 max_windows=config.data.max_windows, video_dim=store.video_dim, text_dim=store.text_dim,
                 clip_len=config.data.clip_len)


def build_train_split(records, store, config) -> batch_lib.Split:
  cache = batch_lib.FeatureCache(store, records)
  split = batch_lib.Split(records=records, cache=cache, spec=pad_spec(config, store))
  if config.data.shuffle_queries:  # control: every sample sees another query's text
    split.text_of = batch_lib.shuffled_text_map(records, config.seed)
  if config.data.augment == 'splice_online':
    from amr_jax import augment  # pylint: disable=import-outside-toplevel
    split.augmented, split.num_augmented, split.infos = augment.make_online_sampler(
        records, cache.video, seed=config.seed, passes=config.data.aug_passes)
  return split


def make_task(config, store):
  from amr_jax.train.registry import get_task  # pylint: disable=import-outside-toplevel
  return get_task(config, video_dim=store.video_dim + 2, text_dim=store.text_dim)


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def predict_split(task, params, split: batch_lib.Split, batch_size: int, mesh, eval_fn=None) -> list[dict]:
  """Jitted batched inference over a split -> submission rows (reference post-processing)."""
  n_dev = mesh.size
  batch_size = int(math.ceil(batch_size / n_dev) * n_dev)
  if eval_fn is None:
    eval_fn = jax.jit(task.eval_forward)
  rows = []
  for batch in batch_lib.eval_batches(split, batch_size, process_index=jax.process_index(),
                                      process_count=jax.process_count()):
    out = eval_fn(params, sharding.to_global(batch, mesh))
    out = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}
    meta = {k: np.asarray(multihost_utils.process_allgather(sharding.to_global({k: batch[k]}, mesh)[k],
                                                            tiled=True))
            for k in ('qid', 'sample_valid', 'src_vid_mask', 'duration')}
    keep = meta['sample_valid'] > 0
    records = {r.qid: r for r in split.records}
    qids = meta['qid'][keep]
    rows += task.postprocess({k: v[keep] for k, v in out.items()}, [records[int(q)] for q in qids],
                             meta['src_vid_mask'][keep].sum(1).astype(int))
  return rows


def evaluate_rows(task_name: str, rows: list[dict], records) -> dict:
  from amr_jax.eval import api as eval_api  # pylint: disable=import-outside-toplevel
  return eval_api.evaluate(task_name, rows, [r.to_json() for r in records])


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
def rng_key(seed: int) -> jax.Array:
  """The step-rng root. 'rbg' keys compile the dropout masks ~3x faster than threefry on CPU."""
  return jax.random.key(seed, impl='rbg')


def write_run_config(workdir: pathlib.Path, config, store) -> None:
  """WORKDIR/config.json = the run config + the feature widths read from the store (for Predictor)."""
  saved = {'run': json.loads(config.to_json_best_effort()),
           'dims': {'video_dim': store.video_dim, 'text_dim': store.text_dim}}
  (workdir / 'config.json').write_text(json.dumps(saved, indent=2, sort_keys=True))


def steps_per_epoch(n: int, global_batch: int) -> int:
  return max(n // global_batch, 1)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) one training stage; returns the final metrics dict."""
  sharding.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  # Data first: every problem is reported before any compute is spent.
  store = open_store(config)
  if is_main:
    write_run_config(workdir, config, store)
  train_records = preflight(load_records(config.data.train_annotations, config.data.subset), store, config,
                            'train')
  val_records = preflight(load_records(config.data.val_annotations, config.data.val_subset), store, config,
                          'val') if config.data.val_annotations else []
  train_split = build_train_split(train_records, store, config)
  val_split = batch_lib.Split(records=val_records, cache=batch_lib.FeatureCache(store, val_records),
                              spec=pad_spec(config, store)) if val_records else None

  # Shapes, then the mesh and the jitted step with shardings.
  mesh = sharding.make_mesh(config.train.get('num_devices', 0))
  print(f'process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local / '
        f'{jax.device_count()} global devices', flush=True)
  global_batch = config.train.batch_size
  if global_batch % mesh.size:
    raise TrainingError(f'train.batch_size={global_batch} is not divisible by {mesh.size} devices')
  spe = steps_per_epoch(len(train_split), global_batch)
  num_steps = config.train.num_steps or config.train.num_epochs * spe
  task = make_task(config, store)
  from amr_jax.train import registry  # pylint: disable=import-outside-toplevel
  tx = registry.make_tx(task, config, spe)
  example = batch_lib.make_train_batch(train_split, config.seed, 0, global_batch)
  state = registry.init_state(task, config, tx, example, mesh)
  repl = sharding.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: repl, state)
  batch_sharding = sharding.data_sharded(mesh)
  index_fn = registry.index_fn(task, config, train_split, global_batch, num_steps)
  step_fn = jax.jit(make_train_step(task, tx, config.train.inject_nan_at_step),
                    in_shardings=(state_sharding, batch_sharding, repl), out_shardings=(state_sharding, repl),
                    donate_argnums=(0,))
  eval_fn = jax.jit(task.eval_forward)

  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  start_step = 0
  if ckpts.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
    state, meta, start_step = ckpts.restore(abstract)
    print(f'resumed from {workdir}/checkpoints/{start_step} (step {int(state.step)})', flush=True)
  logger = MetricLogger(workdir, is_main)
  root_rng = rng_key(config.seed)

  def run_eval(step: int) -> dict:
    if val_split is None:
      return {}
    rows = predict_split(task, state.params, val_split, config.eval.batch_size, mesh, eval_fn)
    metrics = evaluate_rows(task.eval_task, rows, val_records)
    brief = metrics.get('brief', metrics)
    logger.write(step, {f'val/{k}': v for k, v in brief.items() if isinstance(v, (int, float))})
    return brief

  dataset = batch_lib.train_dataset(train_split, seed=config.seed, global_batch=global_batch,
                                    start_step=start_step, num_steps=num_steps,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    index_fn=index_fn)
  progress = Progress(num_steps, start_step, every=config.train.log_every, enabled=is_main)
  last_good = start_step if start_step else None
  brief = {}
  step = start_step
  for step, batch in enumerate(dataset.as_numpy_iterator(), start=start_step):
    rng = jax.random.fold_in(root_rng, step)
    state, metrics = step_fn(state, sharding.to_global(batch, mesh), rng)
    done = step + 1
    if done % config.train.log_every == 0 or done == num_steps:
      host = jax.device_get(metrics)
      logger.write(done, {k: float(v) for k, v in host.items()})
      progress.update(done, float(host['loss']))
    bad = int(metrics['bad_steps'])
    if bad:
      print(f'step {done}: non-finite loss or gradient, update skipped ({bad} in a row)', file=sys.stderr)
      if bad >= config.train.max_bad_steps:
        ckpts.wait()
        where = f'{workdir}/checkpoints/{last_good}' if last_good is not None else 'none saved yet'
        raise TrainingError(f'{bad} consecutive non-finite steps at step {done}; last good checkpoint: {where}')
      continue  # never checkpoint right after a skipped step
    if done % config.train.checkpoint_every == 0 and done < num_steps:
      ckpts.save(done, state, {'step': done})
      last_good = done
    if config.train.eval_every and done % config.train.eval_every == 0 and done < num_steps:
      brief = run_eval(done)
      ckpts.save_best(done, state, dict(brief, step=done))
  # Final: eval, checkpoint, digest.
  done = int(state.step)
  if val_split is not None:
    brief = run_eval(done)
    ckpts.save_best(done, state, dict(brief, step=done))
  if int(state.bad_steps) == 0:
    ckpts.save(done, state, {'step': done}, force=True)
  ckpts.wait()
  ckpts.close()
  digest = params_digest(state.params)
  if is_main:
    (workdir / 'final_params.sha256').write_text(digest + '\n')
  logger.close()
  # Fixed padded shapes: the step compiles exactly once per process (asserted in tests).
  return {'step': done, 'digest': digest, 'step_compiles': step_fn._cache_size(), **brief}  # pylint: disable=protected-access
