"""The model-neutral training loop: task data, mesh, jitted step, evaluators, checkpoints, logs, resume.

`train_and_evaluate(config, workdir)` is what `launch/train.py` calls; it names no method (see amr_jax/task.py).
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from amr_jax.metrics import registry as eval_registry
from amr_jax.train import checkpoints as ckpt_lib
from amr_jax.train import inference, registry, sharding
from amr_jax.train import workdir as workdir_lib
from amr_jax.train.logging import MetricLogger, Progress
from amr_jax.train.state import TrainState, make_train_step, params_digest
from data_pipelines import batches as batch_lib


class TrainingError(RuntimeError):
  """A run that must stop with a clear one-line reason (bad data, non-finite loss streak, ...)."""


def rng_key(seed: int) -> jax.Array:
  """The step-rng root. 'rbg' keys compile the dropout masks ~3x faster than threefry on CPU."""
  return jax.random.key(seed, impl='rbg')


def steps_per_epoch(n: int, global_batch: int) -> int:
  return max(n // global_batch, 1)


def init_state(task, tx, example_batch: dict, mesh, seed: int) -> TrainState:
  """Fresh params (or student/teacher from the run `task.teacher_workdir()` names), replicated on the mesh."""
  repl = sharding.replicated(mesh)
  batch = {k: jnp.asarray(v[:1]) for k, v in example_batch.items()}
  teacher_dir = task.teacher_workdir()
  teacher = registry.load_trained_params(teacher_dir) if teacher_dir else None
  params, frozen = task.init_params(jax.random.key(seed), batch, teacher)

  def create(params, frozen):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=frozen,
                      opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))

  return jax.jit(create, out_shardings=repl)(params, frozen)


class Evaluation:
  """The run's evaluators (config.evals) over its val split: one predict pass, every evaluator's scalars."""

  def __init__(self, task, config, mesh):
    self.task = task
    self.entries = [(name, eval_registry.get(kind, **options)) for name, kind, options in task.evaluators()]
    self.data = None
    if self.entries and config.data.get('val_annotations'):
      self.data = task.eval_data(config.data.val_annotations, config.data.feature_dir,
                                 subset=config.data.get('val_subset', 0))
    self.run = inference.make_runner(mesh)
    self.batch_size = int(config.eval.batch_size)

  def __call__(self, params) -> dict:
    """{'<eval name>/<scalar>': value} for every evaluator, plus the task's diagnostics under the first name."""
    if self.data is None:
      return {}
    predictions = self.task.predict(params, self.data, self.run, self.batch_size)
    scalars = {}
    for name, evaluator in self.entries:
      result = evaluator.evaluate(predictions, self.data.ground_truth)
      scalars.update({f'{name}/{k}': v for k, v in evaluator.scalars(result).items()})
    extra = self.task.diagnostics(params, self.data, self.run, self.batch_size)
    scalars.update({f'{self.entries[0][0]}/{k}': v for k, v in extra.items()})
    return scalars


def _agree(flag: bool) -> bool:
  """Process 0's decision, on every process (multi-host runs decide once)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(jnp.asarray(flag, jnp.int32)))


def _checkpoint_digest(workdir: pathlib.Path) -> str:
  return params_digest(registry.load_trained_params(str(workdir), which='last'))


def _recorded_evals(workdir: pathlib.Path, config) -> dict:
  """The last evaluation a finished run logged: its scalars as `evals`, the first evaluator's unprefixed."""
  last = {}
  path = workdir / 'metrics.jsonl'
  if path.exists():
    for line in path.read_text().splitlines():
      row = json.loads(line)
      if any('/' in k and not k.startswith(('loss/', 'model/', 'data/', 'verifier/')) for k in row if k != 'step'):
        last = {k: v for k, v in row.items() if k != 'step'}
  names = list(config.get('evals', {}).keys())
  prefix = (names[0] + '/') if names else None
  headline = {k[len(prefix):]: v for k, v in last.items() if prefix and k.startswith(prefix)}
  return {**headline, 'evals': last}


def train_and_evaluate(config, workdir: str, argv=None) -> dict:
  """Runs, resumes or (already finished) skips one training run; returns the final metrics dict.

  The workdir lifecycle (amr_jax/train/workdir.py): a lock held for the whole run, the config compared with the
  recorded run before any data work (and the data dims after validation), config.json written only once the run
  is accepted, every attempt logged in attempts.jsonl, state.json 'finished' with the digest at the end.
  """
  sharding.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  argv = list(sys.argv) if argv is None else list(argv)   # what attempts.jsonl records for this attempt
  run_config = workdir_lib.as_plain(config)
  overwrite = bool(config.train.get('overwrite', False))
  with workdir_lib.RunLock(workdir) if is_main else contextlib.nullcontext():
    record = workdir_lib.RunRecord(workdir)
    decision = workdir_lib.accept(workdir, run_config, None, overwrite, argv=argv) if is_main else None
    if _agree(is_main and decision.kind == 'finished'):
      digest = record.ensure_digest(decision.step, lambda _: _checkpoint_digest(workdir)) if is_main else None
      if is_main:
        print(decision.message, flush=True)
      return {'step': decision.step, 'digest': digest, 'already_finished': True, **_recorded_evals(workdir, config)}
    if is_main and decision.kind != 'fresh':
      print(decision.message, flush=True)
    task = registry.make_task(config)
    train_data = task.train_data()   # every data problem is reported here, before any compute
    mesh = sharding.make_mesh(config.train.get('num_devices', 0))
    evaluation = Evaluation(task, config, mesh)
    if is_main:   # the data fixed the dims: the recorded run must agree on them too
      decision = workdir_lib.accept(workdir, run_config, task.dims, False, argv=argv)
    with record.attempt(task.export_payload(), decision, argv=argv) if is_main else contextlib.nullcontext():
      result = _train(task, train_data, evaluation, mesh, config, workdir, is_main)
      if is_main:
        record.mark_finished(result['step'], result['digest'])
    return result


def _train(task, train_data, evaluation, mesh, config, workdir: pathlib.Path, is_main: bool) -> dict:
  """The accepted run: mesh, state, jitted step, the loop, evaluations, checkpoints, the final digest."""
  print(f'process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local / '
        f'{jax.device_count()} global devices', flush=True)
  global_batch = config.train.batch_size
  if global_batch % mesh.size:
    raise TrainingError(f'train.batch_size={global_batch} is not divisible by {mesh.size} devices')
  spe = steps_per_epoch(len(train_data), global_batch)
  num_steps = config.train.num_steps or config.train.num_epochs * spe
  tx = task.optimizer(spe, num_steps)
  example = train_data.batch(config.seed, 0, global_batch)
  state = init_state(task, tx, example, mesh, config.seed)
  repl = sharding.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: repl, state)
  batch_sharding = sharding.data_sharded(mesh)
  index_fn = train_data.sample_order(config.seed, global_batch, num_steps)
  step_fn = jax.jit(make_train_step(task, tx, config.train.inject_nan_at_step),
                    in_shardings=(state_sharding, batch_sharding, repl), out_shardings=(state_sharding, repl),
                    donate_argnums=(0,))

  best_metric = config.eval.get('best_metric', '')
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints, best_metric=best_metric,
                               best_mode=config.eval.get('best_mode', 'max'))
  start_step = 0
  if ckpts.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
    state, _, start_step = ckpts.restore(abstract)
    print(f'resumed from {workdir}/checkpoints/{start_step} (step {int(state.step)})', flush=True)
  logger = MetricLogger(workdir, is_main)
  root_rng = rng_key(config.seed)

  def run_eval(step: int) -> dict:
    scalars = evaluation(state.params)
    if scalars:
      logger.write(step, scalars)
      if best_metric and best_metric not in scalars:
        raise TrainingError(f'eval.best_metric={best_metric!r} is not among the evaluators\' scalars: '
                            + ', '.join(sorted(scalars)))
    return scalars

  dataset = batch_lib.train_dataset(train_data, seed=config.seed, global_batch=global_batch,
                                    start_step=start_step, num_steps=num_steps,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    index_fn=index_fn)
  progress = Progress(num_steps, start_step, every=config.train.log_every, enabled=is_main)
  last_good = start_step if start_step else None
  scalars = {}
  first = True
  for step, batch in enumerate(dataset.as_numpy_iterator(), start=start_step):
    rng = jax.random.fold_in(root_rng, step)
    if first and is_main:
      print('compiling the train step (the first step; later runs read the XLA cache) ...', flush=True)
      t_compile = time.perf_counter()
    global_batch_arrays = sharding.to_global(batch, mesh)
    if first:
      sharding.compile_together(step_fn, state, global_batch_arrays, rng, name='train_step_compiled')
    state, metrics = step_fn(state, global_batch_arrays, rng)
    if first and is_main:
      jax.block_until_ready(metrics['loss'])
      print(f'train step ready in {time.perf_counter() - t_compile:.1f} s', flush=True)
    first = False
    done = step + 1
    if done % config.train.log_every == 0 or done == num_steps:
      host = jax.device_get(metrics)
      logger.write(done, {k: float(v) for k, v in host.items()})
      progress.update(done, float(host['loss']))
      ckpts.check()   # a failed background save stops the run here, naming the path and the last good step
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
      scalars = run_eval(done)
      ckpts.save_best(done, state, dict(scalars, step=done))
  # Final: eval, checkpoint, digest.
  done = int(state.step)
  scalars = run_eval(done)
  if scalars:
    ckpts.save_best(done, state, dict(scalars, step=done))
  if int(state.bad_steps) == 0:
    ckpts.save(done, state, {'step': done}, force=True)
  ckpts.wait()
  ckpts.close()
  digest = params_digest(state.params)   # written to final_params.sha256 by RunRecord.mark_finished
  logger.close()
  # The first evaluator's scalars also without their prefix (the headline numbers of the run).
  headline = {}
  if scalars and evaluation.entries:
    prefix = evaluation.entries[0][0] + '/'
    headline = {k[len(prefix):]: v for k, v in scalars.items() if k.startswith(prefix)}
  # Fixed padded shapes: the step compiles exactly once per process (asserted in tests).
  return {'step': done, 'digest': digest, 'step_compiles': step_fn._cache_size(),  # pylint: disable=protected-access
          **headline, 'evals': scalars}
