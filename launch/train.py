"""Train one AMR stage (or another registered model): `--config=configs/NAME.py[:ARG] --workdir=DIR`.

Resumes from the newest checkpoint in DIR; writes checkpoints, metrics.jsonl, TensorBoard and final_params.sha256.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from amr_jax.train import loop  # pylint: disable=import-outside-toplevel
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(_cli.metrics_table(result))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
