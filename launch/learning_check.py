"""Stage 1 -> stage 2 on planted data, real queries vs a shuffled-query control; prints the val metrics table.

Usage: launch/learning_check.py --workdir=DIR [--num_train=7218 --num_val=1550 --steps1=N --steps2=N --batch=32]
"""
import json

from absl import flags

from amr_jax.workflows import learning_check
from launch import _cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Store, runs and learning_check.json go here.', required=True)
_NUM_TRAIN = flags.DEFINE_integer('num_train', 7218, 'First N QVHighlights train queries (7218 = all).')
_NUM_VAL = flags.DEFINE_integer('num_val', 1550, 'First N QVHighlights val queries (1550 = all).')
_STEPS1 = flags.DEFINE_integer('steps1', 1500, 'Stage-1 steps per arm.')
_STEPS2 = flags.DEFINE_integer('steps2', 500, 'Stage-2 steps per arm.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch.')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Devices of the data mesh.')


def main(argv):
  del argv

  result = learning_check.run(_WORKDIR.value, _NUM_TRAIN.value, _NUM_VAL.value, _STEPS1.value, _STEPS2.value,
                              _BATCH.value, _DEVICES.value)
  print(learning_check.table(result))
  print(json.dumps(result))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
