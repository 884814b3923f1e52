"""The Boost step: 2-fold cross-validated wrong-span mining over the training annotations.

Writes a jsonl like the training file with a `wrong_spans` field on every row (possibly empty).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Mining config (e.g. configs/amr_mine.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the fold models.')
_OUT = flags.DEFINE_string('out', None, 'Output jsonl with wrong_spans on every row.')
flags.mark_flags_as_required(['config', 'workdir', 'out'])


def main(argv):
  del argv
  from amr_jax import mining  # pylint: disable=import-outside-toplevel
  from amr_jax.data import annotations  # pylint: disable=import-outside-toplevel
  records, stats = mining.mine_wrong_spans(_CONFIG.value, _WORKDIR.value)
  annotations.write_jsonl(records, _OUT.value)
  print(json.dumps(stats))
  print(f'wrote {len(records)} rows to {_OUT.value}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
