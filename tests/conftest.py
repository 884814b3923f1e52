"""Test setup: 8 simulated CPU devices (before jax starts), one XLA cache, shared fixtures.

Tests never read the team's shared folder: everything they need is under tests/fixtures and data/.
"""
import os
import pathlib
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA cache for the test processes and the launch scripts they start (AMR_JAX_CACHE): the same tiny
# steps compile in many tests (both learning arms, a killed run and its resume), and each compile takes 20-60 s.
os.environ['AMR_JAX_CACHE'] = os.environ.get('AMR_JAX_TEST_CACHE') or os.path.join(tempfile.gettempdir(),
                                                                                 'amr_jax_test_xla')
ROOT = pathlib.Path(__file__).resolve().parents[1]

import pytest  # noqa: E402

from amr_jax import jax_setup  # noqa: E402

jax_setup.enable_compilation_cache()

FIXTURES = ROOT / 'tests' / 'fixtures'
ANNOTATIONS = ROOT / 'data' / 'annotations'


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return ROOT


@pytest.fixture(scope='session')
def planted_qvh(tmp_path_factory):
  """A tiny planted store over the first 96 QVH train and 48 val queries: (store_dir, train.jsonl, val.jsonl)."""
  from amr_jax.data import annotations, planted
  out = tmp_path_factory.mktemp('planted')
  qvh = ANNOTATIONS / 'qvhighlights'
  train = annotations.load_annotations(qvh / 'highlight_train_release.jsonl')[:96]
  val = annotations.load_annotations(qvh / 'highlight_val_release.jsonl')[:48]
  annotations.write_jsonl(train, out / 'train.jsonl')
  annotations.write_jsonl(val, out / 'val.jsonl')
  planted.write_planted_store(train + val, str(out / 'store'), seed=0, dims='tiny')
  return out / 'store', out / 'train.jsonl', out / 'val.jsonl'


def flat_items(result: dict, prefix: str = '') -> list:
  """[(path, value)] of a nested metrics dict in order, for a readable diff of two metric files."""
  out = []
  for key, value in result.items():
    if isinstance(value, dict):
      out += flat_items(value, f'{prefix}{key}/')
    else:
      out.append((f'{prefix}{key}', value))
  return out


def tiny_config(module_name: str, store_dir, train_path, val_path, **overrides):
  """configs/<module_name>.py:tiny pointed at a planted store, with dotted-key overrides."""
  from amr_jax.workflows import learning_check  # pylint: disable=import-outside-toplevel
  return learning_check.tiny_config(module_name, store_dir, train_path, val_path, **overrides)


def loss_and_grads_on(num_devices: int, task, params, batch: dict, rng, frozen=None):
  """(loss, grads, aux) of `task.loss` in train mode on a `num_devices` mesh: params (and the frozen teacher)
  replicated, the batch split over 'data'."""
  import jax  # pylint: disable=import-outside-toplevel
  from amr_jax.train import sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(num_devices)
  repl = sharding.replicated(mesh)
  grad_fn = jax.jit(jax.value_and_grad(lambda p, t, b, r: task.loss(p, t, b, r, train=True), has_aux=True),
                    in_shardings=(repl, repl, sharding.data_sharded(mesh), repl), out_shardings=repl)
  (loss, aux), grads = grad_fn(jax.device_put(params, repl), jax.device_put(frozen, repl),
                               sharding.to_global(batch, mesh), rng)
  return float(loss), jax.device_get(grads), jax.device_get(aux)


def assert_same_loss_and_grads(one, eight, loss_rtol: float = 1e-5):
  """(loss, grads, ...) of a 1-device and an 8-device run agree: loss `loss_rtol` relative, grads rtol 1e-4."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  assert abs(one[0] - eight[0]) <= loss_rtol * abs(one[0])
  flat1, flat8 = jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])
  scale = max(float(np.abs(g).max()) for g in flat1)
  for a, b in zip(flat1, flat8):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def pytest_configure(config):
  """One persistent XLA cache for the whole test session (and the subprocesses it starts)."""
  del config
  from amr_jax import jax_setup
  os.environ['AMR_JAX_CACHE'] = jax_setup.enable_compilation_cache()  # subprocesses share it


# The longest files first, so that `make test`'s two xdist workers (--dist loadfile) each start on one of them
# and the short files fill in around them, instead of one worker being left with the long tail.
LONGEST_FIRST = ('test_weak_learning_mcmt.py', 'test_weak_learning_cpl.py', 'test_weak_train.py', 'test_learning.py',
                 'test_generic_paths.py', 'test_amdnet_train.py',
                 'test_flashmmr_train.py', 'test_multiprocess.py', 'test_train.py',
                 'test_flashmmr_parity.py', 'test_check_reference.py', 'test_devices.py', 'test_model_parity.py')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
