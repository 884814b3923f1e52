"""The jitted stage-1 and stage-2 losses and gradients on 8 simulated devices equal those on 1 device.

Params replicated, batch split over the 'data' axis; losses are normalised over the global batch. The net is
shallower than the tiny config (one layer of each kind, 2 decoder layers): the test is about sharding, and it
compiles in about half the time.
"""
import jax

from conftest import assert_same_loss_and_grads, loss_and_grads_on
from amr_jax.benchmarks import steps

SHALLOW = dict(t2v_layers=1, enc_layers=1, dec_layers=2)


def test_stage1_loss_and_gradients_8_devices_equal_1_device():
  config, task, spec = steps.build_task('train1', 'tiny', model_overrides=SHALLOW)
  host = steps.random_batch(8, spec)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_model_params(rng, {k: v[:1] for k, v in host.items()})
  results = {n: loss_and_grads_on(n, task, params, host, rng) for n in (1, 8)}
  assert_same_loss_and_grads(results[1], results[8])


def test_stage2_loss_and_gradients_8_devices_equal_1_device():
  """Stage 2: student (trainable) + frozen teacher (replicated, stop_gradient), split batch."""
  config, task, spec = steps.build_task('train2', 'tiny', model_overrides=SHALLOW)
  host = steps.random_batch(8, spec, seed=1)
  rng = jax.random.key(0, impl='rbg')
  example = {k: v[:1] for k, v in host.items()}
  student, teacher = task.stage2_from_stage1(task.init_model_params(jax.random.key(1, impl='rbg'), example),
                                             task.init_model_params(rng, example), rng)
  results = {n: loss_and_grads_on(n, task, student, host, rng, frozen=teacher) for n in (1, 8)}
  assert 'loss/loss_dill' in results[1][2]  # the teacher term is really in the loss
  assert_same_loss_and_grads(results[1], results[8])
