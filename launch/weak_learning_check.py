"""CPL and MCMT on planted Charades-STA, real queries vs a shuffled-query control over seeds; prints the table.

Usage: launch/weak_learning_check.py --workdir=DIR [--methods=cpl,mcmt --seeds=0,1,2 --num_train=600 --num_val=150
       --num_steps=N --eval_every=N]
"""
import json

from absl import flags

from amr_jax.workflows import weak_chain
from launch import _cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Stores, runs and weak_learning_check.json go here.', required=True)
_METHODS = flags.DEFINE_list('methods', ['cpl', 'mcmt'], 'Methods to train (cpl, mcmt).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (store, init, data order) of the runs.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 600, 'First N Charades-STA train queries (12408 = all).')
_NUM_VAL = flags.DEFINE_integer('num_val', 150, 'First N Charades-STA test queries (3720 = all).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', None, 'Steps per run (default: the tiny recipe).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', None, 'Steps between val evaluations (0 = only at the end; '
                                  'default: the tiny recipe).')
flags.register_validator('methods', lambda methods: set(methods) <= {'cpl', 'mcmt'}, 'methods are cpl and mcmt')
flags.register_validator('seeds', lambda seeds: all(s.isdigit() for s in seeds), 'seeds are integers')


def main(argv):
  del argv
  rows = weak_chain.compare(_WORKDIR.value, _METHODS.value, [int(s) for s in _SEEDS.value],
                            num_train=_NUM_TRAIN.value, num_val=_NUM_VAL.value, num_steps=_NUM_STEPS.value,
                            eval_every=_EVAL_EVERY.value)
  print(weak_chain.table(rows))
  with open(f'{_WORKDIR.value}/weak_learning_check.json', 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  print(json.dumps(rows))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
