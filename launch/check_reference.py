"""Parity check against a PyTorch reference fixture of any registered method; sizes come from the fixture itself.

Prints one line per group with its max abs/rel error; exits 0 only when every comparison holds.
"""
import importlib
import pathlib
import sys

from absl import flags

from amr_jax.train import registry
from launch import _cli

_FIXTURE_DIR = flags.DEFINE_string('fixture_dir', 'tests/fixtures/amr_reference', 'Fixture folder.')
_MODEL = flags.DEFINE_string('model', 'amr', 'Which method\'s reference: ' + ', '.join(sorted(registry.METHODS)))


def main(argv):
  del argv
  fixture_dir = pathlib.Path(_FIXTURE_DIR.value)
  if not (fixture_dir / 'tiny_config.json').exists():
    raise FileNotFoundError(f'{fixture_dir}: no tiny_config.json')
  checker = importlib.import_module(registry.reference_module(_MODEL.value))
  lines, ok = checker.run_check(str(fixture_dir))
  print('\n'.join(lines))
  print('ALL OK' if ok else 'MISMATCH', flush=True)
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
