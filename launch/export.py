"""Inference-only export of a training workdir's best checkpoint: orbax params + config.json.

No optimiser state and no teacher; `predict.py --workdir=OUT` and `Predictor(OUT)` load it.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from launch import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.')
_OUT = flags.DEFINE_string('out', None, 'Export directory.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'last'], 'Checkpoint to export.')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  del argv
  from amr_jax.train import checkpoints, registry  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(_WORKDIR.value)
  if not (workdir / 'config.json').exists():
    raise FileNotFoundError(f'{workdir}: not a training workdir (no config.json)')
  which = _WHICH.value if (workdir / _WHICH.value if _WHICH.value == 'best' else workdir).exists() else 'last'
  params = registry.load_trained_params(str(workdir), which=which)
  checkpoints.save_export(_OUT.value, params, json.loads((workdir / 'config.json').read_text()))
  print(f'exported the {which} checkpoint of {workdir} to {_OUT.value}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
