"""The counter-hash dropout mask: right keep rate, independent across keys, the same on 1 and 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.ops import layers
from amr_jax.train import sharding


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_keep_rate_and_scaling(rate):
  x = jnp.ones((64, 75, 256))
  y = np.asarray(layers.dropout(x, rate, jax.random.key(0, impl='rbg')))
  kept = y != 0
  assert abs(kept.mean() - (1 - rate)) < 0.003  # 1.2M draws: 3 sigma is ~0.0015
  np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
  # no structure along any axis: per-row and per-column keep rates stay near 1 - rate
  assert np.abs(kept.mean(axis=(0, 1)) - (1 - rate)).max() < 0.06
  assert np.abs(kept.mean(axis=(0, 2)) - (1 - rate)).max() < 0.03


def test_masks_differ_between_keys_and_are_uncorrelated():
  shape = (256, 1024)
  a = np.asarray(layers.keep_mask(jax.random.key(1, impl='rbg'), 0.5, shape))
  b = np.asarray(layers.keep_mask(jax.random.fold_in(jax.random.key(1, impl='rbg'), 1), 0.5, shape))
  agree = (a == b).mean()
  assert 0.49 < agree < 0.51
  # neighbouring elements are independent
  assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.01
  same = np.asarray(layers.keep_mask(jax.random.key(1, impl='rbg'), 0.5, shape))
  np.testing.assert_array_equal(a, same)


def test_sharded_mask_equals_unsharded():
  x = jnp.ones((8, 75, 16))
  key = jax.random.key(3, impl='rbg')
  fn = lambda x, k: layers.dropout(x, 0.3, k)  # noqa: E731
  one = np.asarray(jax.jit(fn)(x, key))
  mesh = sharding.make_mesh(8)
  eight = jax.jit(fn, in_shardings=(sharding.data_sharded(mesh), sharding.replicated(mesh)))(
      jax.device_put(x, sharding.data_sharded(mesh)), key)
  np.testing.assert_array_equal(one, np.asarray(eight))


def test_module_is_identity_when_deterministic_and_jax_impl_works():
  x = jnp.arange(12.0).reshape(3, 4)
  module = layers.Dropout(0.5)
  assert (module.apply({}, x, deterministic=True) == x).all()
  y = layers.Dropout(0.5, impl='jax').apply({}, jnp.ones((1000,)), deterministic=False,
                                            rngs={'dropout': jax.random.key(0)})
  assert 0.4 < float((y != 0).mean()) < 0.6
  with pytest.raises(ValueError, match='dropout impl'):
    layers.keep_mask(jax.random.key(0), 0.5, (3,), impl='bogus')
