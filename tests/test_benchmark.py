"""The benchmark CLI in tiny mode: it runs and its last line is one JSON object with the contract keys.

Speed targets live in the benchmark output, never in assertions.
"""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize('suite', ['input', 'infer'])
def test_benchmark_tiny_prints_json(suite):
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'benchmark.py'), f'--suite={suite}', '--dims=tiny',
                         '--batch=8', '--steps=2'], cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['suite'] == suite and result['median_s'] > 0 and result['samples_per_s'] > 0
  if suite == 'input':  # both pipelines are timed: plain samples and online Splice (stage 1's input)
    assert result['plain_samples_per_s'] > 0 and result['ratio_to_step_demand'] > 0


def test_profile_maps_thunks_to_modules():
  """`--suite=profile` machinery on a small Flax net: thunk time lands on forward/backward of named modules."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from amr_jax.benchmarks import module_profile  # pylint: disable=import-outside-toplevel

  class AMR(nn.Module):  # the profile recognises the model by this name in the op_name path
    @nn.compact
    def __call__(self, x):
      return nn.Dense(64, name='encoder')(jax.nn.relu(nn.Dense(256, name='input_proj')(x)))

  model, x = AMR(), jnp.ones((512, 128))
  params = model.init(jax.random.key(0), x)

  def step(p, x):
    return jax.grad(lambda q: jnp.sum(model.apply(q, x) ** 2))(p)

  result = module_profile.profile_jitted(jax.jit(step), (params, x), calls=2)
  assert result['step_s'] > 0 and result['by_kind'].get('matmul', 0) > 0, result
  modules = ' '.join(result['by_module'])
  assert 'forward: input_proj' in modules and 'backward: encoder' in modules, result['by_module']
  assert module_profile.table(result).startswith('| part of the step |')
