"""The jitted stage-1 and stage-2 losses and gradients on 8 simulated devices equal those on 1 device.

Params replicated, batch split over the 'data' axis; losses are normalised over the global batch.
"""
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.benchmarks import steps
from amr_jax.train import sharding


def _assert_same_loss_and_grads(one, eight):
  """(loss, grads, ...) of the 1-device and 8-device runs agree: loss 1e-5 relative, grads rtol 1e-4."""
  assert abs(one[0] - eight[0]) <= 1e-5 * abs(one[0])
  flat1, flat8 = jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])
  scale = max(float(np.abs(g).max()) for g in flat1)
  for a, b in zip(flat1, flat8):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_stage1_loss_and_gradients_8_devices_equal_1_device():
  config, task, spec = steps.build_task('train1', 'tiny')
  host = steps.random_batch(8, spec)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_params(rng, {k: v[:1] for k, v in host.items()})
  results = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    repl = sharding.replicated(mesh)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, r: task.loss(p, None, b, r, train=True), has_aux=True),
                      in_shardings=(repl, sharding.data_sharded(mesh), repl), out_shardings=repl)
    (loss, _), grads = grad_fn(jax.device_put(params, repl), sharding.to_global(host, mesh), rng)
    results[n] = (float(loss), jax.device_get(grads))
  _assert_same_loss_and_grads(results[1], results[8])


def test_stage2_loss_and_gradients_8_devices_equal_1_device():
  """Stage 2: student (trainable) + frozen teacher (replicated, stop_gradient), split batch."""
  config, task, spec = steps.build_task('train2', 'tiny')
  host = steps.random_batch(8, spec, seed=1)
  rng = jax.random.key(0, impl='rbg')
  example = {k: v[:1] for k, v in host.items()}
  student, teacher = task.stage2_from_stage1(task.init_params(jax.random.key(1, impl='rbg'), example),
                                             task.init_params(rng, example), rng)
  results = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    repl = sharding.replicated(mesh)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, t, b, r: task.loss(p, t, b, r, train=True), has_aux=True),
                      in_shardings=(repl, repl, sharding.data_sharded(mesh), repl), out_shardings=repl)
    (loss, aux), grads = grad_fn(jax.device_put(student, repl), jax.device_put(teacher, repl),
                                 sharding.to_global(host, mesh), rng)
    results[n] = (float(loss), jax.device_get(grads), jax.device_get(aux))
  assert 'loss/loss_dill' in results[1][2]  # the teacher term is really in the loss
  _assert_same_loss_and_grads(results[1], results[8])
