"""The Boost step: 2-fold cross-validated wrong-span mining over the training annotations.

Writes a jsonl like the training file with a `wrong_spans` field on every row (possibly empty).
"""
import json

from absl import flags
from ml_collections import config_flags

from amr_jax.data import annotations
from amr_jax.workflows import boost_mining
from launch import _cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Mining config (e.g. configs/amr_mine.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the fold models.')
_OUT = flags.DEFINE_string('out', None, 'Output jsonl with wrong_spans on every row.')
flags.mark_flags_as_required(['config', 'workdir', 'out'])


def main(argv):
  del argv
  records, stats = boost_mining.mine_wrong_spans(_CONFIG.value, _WORKDIR.value)
  annotations.write_jsonl(records, _OUT.value)
  print(json.dumps(stats))
  print(f'wrote {len(records)} rows to {_OUT.value}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
