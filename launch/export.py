"""Inference-only export of a training workdir's best checkpoint: orbax params + config.json (any method).

No optimiser state and no teacher; `predict.py --workdir=OUT` and `Predictor(OUT)` load it with no data at hand.
"""
import pathlib

from absl import flags

from amr_jax.train import checkpoints, registry
from launch import _cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.')
_OUT = flags.DEFINE_string('out', None, 'Export directory.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'last'], 'Checkpoint to export.')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  saved = registry.read_saved(workdir)
  registry.task_from_saved(workdir)   # the record must rebuild its task (method registered, dims present)
  which = _WHICH.value if _WHICH.value == 'last' or (workdir / 'best').exists() else 'last'
  params = registry.load_trained_params(str(workdir), which=which)
  checkpoints.save_export(_OUT.value, params, saved)
  print(f'exported the {which} checkpoint of {workdir} to {_OUT.value}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
