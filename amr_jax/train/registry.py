"""Model registry and stage wiring: task construction, optimiser, initial state, sampling order.

Adding a model = a task class (init/loss/eval_forward/postprocess), a config, and one entry in TASKS.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amr_jax import optim as optim_lib
from amr_jax.train import checkpoints as ckpt_lib
from amr_jax.train.state import TrainState


def _amr_task(config, video_dim, text_dim):
  from amr_jax.train.amr_task import AMRTask  # pylint: disable=import-outside-toplevel
  return AMRTask(config, video_dim, text_dim)


def _flashmmr_task(config, video_dim, text_dim):
  from amr_jax.train.flashmmr_task import FlashMMRTask  # pylint: disable=import-outside-toplevel
  return FlashMMRTask(config, video_dim, text_dim)


TASKS: dict[str, Callable] = {'amr': _amr_task, 'flashmmr': _flashmmr_task}


def get_task(config, video_dim: int, text_dim: int):
  name = config.get('task', 'amr')
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {sorted(TASKS)}')
  return TASKS[name](config, video_dim, text_dim)


def make_tx(task, config, steps_per_epoch: int) -> optax.GradientTransformation:
  """Clip + AdamW with the StepLR schedule; params that get no gradient are frozen through optax."""
  schedule = optim_lib.step_lr_schedule(config.optim.lr, config.optim.lr_drop, steps_per_epoch)
  return optim_lib.make_optimizer(config.optim, task.trainable_mask_fn, lr_schedule=schedule)


def init_state(task, config, tx, example_batch: dict, mesh) -> TrainState:
  """Fresh state (stage 1) or student/teacher from the stage-1 run (stage 2), replicated on the mesh."""
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = {k: jnp.asarray(v[:1]) for k, v in example_batch.items()}
  rng = jax.random.key(config.seed)
  params = task.init_params(rng, batch)
  frozen = None
  if task.needs_teacher:
    src = config.init.stage1_workdir
    if not src:
      raise ValueError('stage 2 needs --config.init.stage1_workdir (the stage-1 run to distil from)')
    stage1_params = load_trained_params(src)
    params, frozen = task.stage2_from_stage1(stage1_params, params, jax.random.fold_in(rng, 2))

  def create(params, frozen):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=frozen,
                      opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))

  return jax.jit(create, out_shardings=repl)(params, frozen)


def load_trained_params(workdir: str, which: str = 'last'):
  """Trainable params of a training workdir (latest rolling checkpoint, or 'best'), or of an export dir."""
  path = pathlib.Path(workdir)
  if (path / 'config.json').exists() and (path / 'params').exists():
    return ckpt_lib.load_export(path)[0]
  sub = path / ('checkpoints' if which == 'last' else 'best')
  state, _, _ = ckpt_lib.restore_params_only(sub)
  return state['params']


def index_fn(task, config, split, global_batch: int, num_steps: int) -> Optional[Callable]:
  """Sample order: None = uniform shuffled epochs (reference); 'easy_to_hard' = the curriculum."""
  if config.data.curriculum == 'none':
    return None
  if config.data.curriculum != 'easy_to_hard':
    raise ValueError(f'unknown data.curriculum {config.data.curriculum!r}')
  from amr_jax import curriculum  # pylint: disable=import-outside-toplevel
  from data_pipelines.batches import seeded_rng  # pylint: disable=import-outside-toplevel
  difficulty = split.difficulty()
  cfg = config.data.curriculum_schedule.to_dict()

  def indices(step: int) -> np.ndarray:
    weights = curriculum.sampling_weights(difficulty, step, num_steps, cfg)
    return curriculum.sample_indices(weights, global_batch, seeded_rng(config.seed, 'curriculum', step))

  return indices
