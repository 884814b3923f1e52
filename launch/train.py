"""Train any registered method (AMR stage 1/2, FlashMMR, ...): `--config=configs/NAME.py[:ARG] --workdir=DIR`.

Resumes from the newest checkpoint in DIR, exits 0 at once on a finished run, refuses a busy or incompatible one;
writes checkpoints, metrics.jsonl, TensorBoard, config.json, attempts.jsonl and final_params.sha256.
`--config_help` lists every config key with its value and meaning.
"""
import sys

from launch import _cli  # first: it silences TensorFlow / absl start-up noise before they load

from absl import flags  # noqa: E402  pylint: disable=wrong-import-order
from ml_collections import config_flags  # noqa: E402

from amr_jax.train import loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, argv=sys.argv)
  print(_cli.metrics_table(result))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
