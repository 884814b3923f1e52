"""model.decode_negatives='kstar' (decode only k*'s negatives) gives the loss, every term and every gradient of
the reference's 'all' (every proposal's negatives decoded), with and without the fused reference pass."""
import jax
import numpy as np
import pytest

from amr_jax.benchmarks import weak_suite
from amr_jax.projects.cpl import losses as losses_lib
from amr_jax.train import registry


def _task(**switches):
  """The tiny CPL task with `section.key=value` switches."""
  config, task = weak_suite.build_task('cpl', 'tiny')
  for key, value in switches.items():
    section, name = key.split('__')
    config[section][name] = value
  return registry.task_class('cpl')(config, task.dims)


@pytest.mark.parametrize('reference_downsampled', [True, False])
def test_kstar_negatives_match_all_negatives(reference_downsampled):
  batch = {k: jax.numpy.asarray(v) for k, v in weak_suite.random_train_batch(6, 'tiny', seed=3).items()}
  params = None
  results = {}
  for mode in ('all', 'kstar'):
    task = _task(model__decode_negatives=mode, quirks__reference_downsampled=reference_downsampled)
    assert task.model.config.decode_negatives == mode
    if params is None:
      params, _ = task.init_params(jax.random.key(1), batch)

    def loss(p):
      return losses_lib.batch_loss(task.model, p, batch, task.loss_cfg, jax.random.key(2), train=False)
    (total, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results[mode] = (total, aux, grads)
  (t_all, aux_all, g_all), (t_k, aux_k, g_k) = results['all'], results['kstar']
  np.testing.assert_allclose(t_k, t_all, rtol=1e-6, atol=1e-6)
  assert np.array_equal(aux_k['kstar'], aux_all['kstar'])
  for key in losses_lib.SCALAR_METRICS + ('nll.left_at_kstar', 'nll.right_at_kstar', 'nll.ref', 'nll.min'):
    np.testing.assert_allclose(aux_k[key], aux_all[key], rtol=1e-5, atol=1e-6, err_msg=key)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(g_all))
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g_all), jax.tree_util.tree_leaves(g_all),
                        jax.tree_util.tree_leaves(g_k)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path[0]))


def test_kstar_negatives_refuse_the_all_k_loss():
  task = _task(model__decode_negatives='kstar', quirks__negatives_at_kstar=False)
  batch = {k: jax.numpy.asarray(v) for k, v in weak_suite.random_train_batch(2, 'tiny').items()}
  params, _ = task.init_params(jax.random.key(1), batch)
  with pytest.raises(ValueError, match='negatives_at_kstar'):
    losses_lib.batch_loss(task.model, params, batch, task.loss_cfg, jax.random.key(0), train=False)
