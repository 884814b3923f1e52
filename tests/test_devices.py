"""The jitted stage-1 step on 8 simulated devices equals the same step on 1 device (loss and gradients).

Params replicated, batch split over the 'data' axis; losses are normalised over the global batch.
"""
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.benchmarks import steps
from amr_jax.train import registry, sharding
from amr_jax.train.state import TrainState, make_train_step


def test_stage1_step_8_devices_equals_1_device():
  config, task, spec = steps.build_task('train1', 'tiny')
  host = steps.random_batch(8, spec)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_params(rng, {k: v[:1] for k, v in host.items()})
  tx = registry.make_tx(task, config, steps_per_epoch=10)
  results = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=None,
                       opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
    repl = sharding.replicated(mesh)
    state = jax.device_put(state, repl)
    step = jax.jit(make_train_step(task, tx), in_shardings=(repl, sharding.data_sharded(mesh), repl))
    new_state, metrics = step(state, sharding.to_global(host, mesh), rng)
    results[n] = (float(metrics['loss']), float(metrics['grad_norm']), jax.device_get(new_state.params))
  assert abs(results[1][0] - results[8][0]) <= 1e-5 * abs(results[1][0])
  assert abs(results[1][1] - results[8][1]) <= 1e-4 * abs(results[1][1])
  for a, b in zip(jax.tree.leaves(results[1][2]), jax.tree.leaves(results[8][2])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
