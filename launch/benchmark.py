"""Benchmarks at the real dimensions: AMR (input, train1, train2, infer, eval, profile), AMDNet, CPL/MCMT, scale.

Prints human-readable lines, then as the LAST line one JSON object (suite, median_s, samples_per_s, ...).
"""
import json

from absl import flags

from amr_jax.benchmarks import amdnet_suite, eval_suite, input_suite, module_profile, scale_suite, steps, weak_suite
from launch import _cli

SUITES = ['input', 'train1', 'train2', 'infer', 'eval', 'profile', 'amdnet_train', 'amdnet_eval', 'cpl_train',
          'mcmt_train', 'scale']

_SUITE = flags.DEFINE_enum('suite', 'train1', SUITES,
                            'What to time (profile: train1 step time per module, from a profiler trace; scale: '
                            'the bounded-memory ArrayRecord source on the full planted QVHighlights store).')
_ROOT = flags.DEFINE_string('root', '/tmp/amr_jax_scale', 'scale: where the planted store and its conversion go.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch size.')
_DIMS = flags.DEFINE_enum('dims', 'real', ['real', 'tiny'], 'Feature/model dimensions.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps after warm-up.')
_PRECISION = flags.DEFINE_enum('precision', 'fp32', ['fp32', 'bf16'], 'Matmul precision (bf16 is opt-in).')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Use the first N devices (0 = all).')
_CONFIG = flags.DEFINE_string('config', '', 'Model config file (default: the AMR configs).')


def main(argv):
  del argv
  if _SUITE.value == 'eval':
    result = eval_suite.run(repeats=max(_STEPS.value, 15))  # the process time varies: take the median of many
  elif _SUITE.value == 'profile':
    result = module_profile.run('train1', batch=_BATCH.value, dims=_DIMS.value)
    print(module_profile.table(result))
  elif _SUITE.value == 'amdnet_train':
    result = amdnet_suite.train(batch=_BATCH.value if _BATCH.value != 32 else 128, dims=_DIMS.value,
                                steps=_STEPS.value, num_devices=_DEVICES.value or None)
  elif _SUITE.value == 'amdnet_eval':
    result = amdnet_suite.evaluate(dims=_DIMS.value, num_devices=_DEVICES.value or None)
  elif _SUITE.value in ('cpl_train', 'mcmt_train'):
    result = weak_suite.train(method=_SUITE.value.split('_')[0], batch=_BATCH.value, dims=_DIMS.value,
                              steps=_STEPS.value, num_devices=_DEVICES.value or None)
  elif _SUITE.value == 'scale':
    result = scale_suite.run(_ROOT.value, dims=_DIMS.value, batch=_BATCH.value)
  elif _SUITE.value == 'input':
    result = input_suite.run(batch=_BATCH.value, dims=_DIMS.value, steps=_STEPS.value)
  else:
    result = steps.run(_SUITE.value, _BATCH.value, _DIMS.value, _STEPS.value, _PRECISION.value,
                       _DEVICES.value or None, config_path=_CONFIG.value)
  for k, v in result.items():
    print(f'{k:>20}: {v}')
  print(json.dumps(result))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
