"""Train any registered method (AMR stage 1/2, FlashMMR, ...): `--config=configs/NAME.py[:ARG] --workdir=DIR`.

Resumes from the newest checkpoint in DIR; writes checkpoints, metrics.jsonl, TensorBoard and final_params.sha256.
"""
from absl import flags
from ml_collections import config_flags

from amr_jax.train import loop
from launch import _cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(_cli.metrics_table(result))


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
