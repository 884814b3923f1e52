"""`make demo`: the AMR chain on the embedded default (amr_jax/workflows/demo.py), end to end in minutes.

planted store -> validate -> Boost mining -> stage 1 (Splice+Boost) -> stage 2 -> predict (+plots) -> evaluate.
`--method=amdnet` (PRVR, workflows/amdnet_chain.py) and `--method=cpl|mcmt` (weak MR, workflows/weak_chain.py)
run those methods' chains on their planted stores, each beside its shuffled-query control.
"""
from absl import flags

from amr_jax.workflows import amdnet_chain, demo, weak_chain
from launch import _cli

_METHOD = flags.DEFINE_enum('method', 'amr', ['amr', 'amdnet', 'cpl', 'mcmt'], 'Which chain.')
_WORKDIR = flags.DEFINE_string('workdir', 'demo_out', 'Where everything goes.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 1000, 'QVHighlights train queries used.')
_NUM_VAL = flags.DEFINE_integer('num_val', 200, 'QVHighlights val queries used.')
_STEPS1 = flags.DEFINE_integer('steps1', 400, 'Stage-1 steps.')
_STEPS2 = flags.DEFINE_integer('steps2', 200, 'Stage-2 steps.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch of every training run (the tiny configs learn at 32).')
_MINE_STEPS = flags.DEFINE_integer('mine_steps', 150, 'Steps of each Boost fold model.')
_PLOTS = flags.DEFINE_integer('plots', 6, 'Per-query plots written.')


def main(argv):
  del argv
  workdir = _WORKDIR.value if _METHOD.value == 'amr' else f'{_WORKDIR.value}/{_METHOD.value}'  # own folder each
  if _METHOD.value == 'amdnet':
    amdnet_chain.run(workdir)
    return
  if _METHOD.value in ('cpl', 'mcmt'):
    weak_chain.run(workdir, method=_METHOD.value)
    return
  demo.amr_chain(_WORKDIR.value, num_train=_NUM_TRAIN.value, num_val=_NUM_VAL.value, steps1=_STEPS1.value,
                 steps2=_STEPS2.value, batch=_BATCH.value, mine_steps=_MINE_STEPS.value, num_plots=_PLOTS.value)


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
