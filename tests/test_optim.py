"""Tests of the optimiser: one clip + AdamW step reproduces the PyTorch fixture; frozen params; clip; StepLR.

Parameters are flat dicts keyed by the PyTorch names of the fixture npz files.
"""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from amr_jax.ops import optim
from configs import amr_common
from tests.conftest import FIXTURES

FIXTURE_DIR = FIXTURES / 'amr_reference'
STAGES = {
    'pretrain': ('stage1_params', 'stage1_grads', 'stage1_params_after_step', 'stage1_losses'),
    'distill': ('stage2_params_student', 'stage2_grads', 'stage2_params_student_after_step', 'stage2_losses'),
}


def _optim_cfg():
  """The optimiser of the fixture's own run (its tiny_config.json), in our config's keys."""
  fixture = json.loads((FIXTURE_DIR / 'tiny_config.json').read_text())['optimizer']
  cfg = amr_common.base_config('tiny').optim
  cfg.lr, (cfg.b1, cfg.b2), cfg.eps = fixture['lr'], fixture['betas'], fixture['eps']
  cfg.weight_decay, cfg.grad_clip = fixture['weight_decay'], fixture['grad_clip']['max_norm']
  return cfg


@pytest.mark.parametrize('stage', ['pretrain', 'distill'])
def test_one_step_matches_pytorch(stage):
  params_name, grads_name, after_name, losses_name = STAGES[stage]
  grads_np = dict(np.load(FIXTURE_DIR / f'{grads_name}.npz'))
  params_np = np.load(FIXTURE_DIR / f'{params_name}.npz')
  after_np = np.load(FIXTURE_DIR / f'{after_name}.npz')
  aliases = json.loads((FIXTURE_DIR / 'param_shapes.json').read_text())['aliases']
  params = {k: jnp.asarray(params_np[k]) for k in grads_np}  # canonical names only
  grads = {k: jnp.asarray(v) for k, v in grads_np.items()}

  frozen = optim.params_without_grad_mask(params, stage)
  expected_frozen = json.loads((FIXTURE_DIR / f'{losses_name}.json').read_text())['params_without_grad']
  assert sorted(k for k, v in frozen.items() if v) == sorted(expected_frozen)

  tx = optim.make_optimizer(_optim_cfg(), params, optim.params_with_grad_mask(params, stage))
  opt_state = tx.init(params)
  # Adam moments exist only for trainable leaves (2 per trainable leaf) plus the step count.
  num_trainable = sum(not v for v in frozen.values())
  assert len(jax.tree.leaves(opt_state)) == 2 * num_trainable + 1

  @jax.jit
  def step(params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  new_params, _ = step(params, grads, opt_state)
  max_err = 0.0
  for key, value in new_params.items():
    value = np.asarray(value)
    if frozen[key]:
      np.testing.assert_array_equal(value, params_np[key])  # bit-identical: no update, no decay
      np.testing.assert_array_equal(value, after_np[key])
    else:
      max_err = max(max_err, float(np.abs(value - after_np[key]).max()))
  assert max_err <= 1e-6
  for alias, canonical in aliases.items():
    if alias in after_np.files and canonical in new_params:
      np.testing.assert_array_equal(after_np[alias], after_np[canonical])


def test_mask_builder_on_flax_style_paths():
  leaf = jnp.zeros(2)
  params = {'params': {
      'query_embed': {'embedding': leaf},
      'new_query_embed': {'embedding': leaf},
      'txt_position_embed': {'position_embeddings': {'embedding': leaf}, 'LayerNorm': {'scale': leaf}},
      'decoder': {'layers_0': {'query_embed_proj': {'kernel': leaf}}},
      'span_embed': [{'kernel': leaf}],
  }}
  stage1 = optim.params_without_grad_mask(params, 'pretrain')['params']
  stage2 = optim.params_without_grad_mask(params, 'distill')['params']
  assert stage1['txt_position_embed'] == {'position_embeddings': {'embedding': True}, 'LayerNorm': {'scale': True}}
  assert not stage1['query_embed']['embedding'] and stage2['query_embed']['embedding']
  assert not stage2['new_query_embed']['embedding']
  assert not stage2['decoder']['layers_0']['query_embed_proj']['kernel']
  assert stage2['span_embed'] == [{'kernel': False}]
  custom = optim.params_without_grad_mask(params, 2, path_predicate=lambda path: path.endswith('span_embed/0/kernel'))
  assert custom['params']['span_embed'] == [{'kernel': True}]
  with pytest.raises(ValueError):
    optim.params_without_grad_mask(params, 'stage3')


@pytest.mark.parametrize('mask_as', ['pytree', 'function', 'function_positional'])
def test_frozen_params_get_no_decay_over_several_steps(mask_as):
  params = {'a': jnp.ones(3), 'query_embed': {'weight': jnp.full((2, 2), 0.7)}}
  mask_fn = functools.partial(optim.params_with_grad_mask, stage='distill')
  if mask_as == 'pytree':
    tx = optim.make_optimizer(_optim_cfg(), params, mask_fn(params))
  elif mask_as == 'function':
    tx = optim.make_optimizer(_optim_cfg(), trainable_mask=mask_fn)
  else:  # the trainer's call: make_optimizer(cfg, mask_fn, lr_schedule=...)
    tx = optim.make_optimizer(_optim_cfg(), mask_fn, lr_schedule=optim.step_lr_schedule(1e-4, 1, 100))
  opt_state = tx.init(params)
  grads = {'a': jnp.asarray([0.3, -0.2, 0.1]), 'query_embed': {'weight': jnp.ones((2, 2))}}
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(params['query_embed']['weight']), np.float32(0.7))
  assert not np.allclose(np.asarray(params['a']), 1.0)


def test_clip_matches_torch_semantics():
  clip = optim.clip_by_global_norm_torch(0.1)
  small = {'x': jnp.asarray([0.03, 0.04])}  # norm 0.05: untouched
  np.testing.assert_array_equal(np.asarray(clip.update(small, clip.init(small))[0]['x']), np.asarray(small['x']))
  big = {'x': jnp.asarray([3.0, 4.0]), 'y': jnp.asarray([[0.0]])}  # norm 5
  clipped, _ = clip.update(big, clip.init(big))
  np.testing.assert_allclose(np.asarray(clipped['x']), np.asarray([3.0, 4.0]) * (0.1 / (5.0 + 1e-6)), rtol=1e-7)
  at_threshold = {'x': jnp.asarray([0.1])}  # factor 0.1/(0.1+1e-6) < 1: PyTorch still scales
  assert float(clip.update(at_threshold, None)[0]['x'][0]) < 0.1


def test_step_lr_schedule():
  schedule = optim.step_lr_schedule(1e-4, lr_drop_epochs=40, steps_per_epoch=226)
  assert float(schedule(0)) == pytest.approx(1e-4)
  assert float(schedule(40 * 226 - 1)) == pytest.approx(1e-4)
  assert float(schedule(40 * 226)) == pytest.approx(1e-5)
  assert float(schedule(80 * 226 + 5)) == pytest.approx(1e-6)
  with pytest.raises(ValueError):
    optim.step_lr_schedule(1e-4, lr_drop_epochs=0, steps_per_epoch=10)


def test_schedule_scales_update_and_decay():
  """With the lr dropped by 10x, both the Adam step and the decoupled decay shrink by 10x (PyTorch AdamW)."""
  cfg = ml_collections.ConfigDict(_optim_cfg().to_dict())
  cfg.weight_decay = 0.5
  params = {'a': jnp.asarray([1.0, -2.0])}
  grads = {'a': jnp.asarray([0.01, 0.02])}
  deltas = []
  for lr_schedule in (optim.step_lr_schedule(cfg.lr, 1, 1), lambda step: cfg.lr * 0.1):
    tx = optim.make_optimizer(cfg, params, lr_schedule=lr_schedule)
    state = tx.init(params)
    deltas.append(np.asarray(tx.update(grads, state, params)[0]['a']))
  np.testing.assert_allclose(deltas[1], deltas[0] * 0.1, rtol=1e-6)
