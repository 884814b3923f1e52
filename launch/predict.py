"""Inference of any method with the best (or last) checkpoint of a workdir, or an export: writes its submission.

`--config` is optional (the workdir's saved config is used); `--plots=DIR` writes per-query PNGs (MR methods).
"""
import pathlib

from absl import flags
from ml_collections import config_flags

from amr_jax.data import annotations
from amr_jax.metrics import plots
from amr_jax.train.predictor import Predictor
from launch import _cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Unused when the workdir has config.json.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir or export directory.')
_ANNOTATIONS = flags.DEFINE_string('annotations', None, 'Annotation file(s) to predict, comma-separated.')
_FEATURES = flags.DEFINE_string('features', None, 'Feature store root.')
_OUT = flags.DEFINE_string('out', None, 'Submission file to write.')
_PLOTS = flags.DEFINE_string('plots', None, 'Directory for per-query PNG plots (moment-retrieval methods).')
_MAX_PLOTS = flags.DEFINE_integer('max_plots', 20, 'At most this many plots.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'last'], 'Checkpoint to use in a training workdir.')
_SLIDING = flags.DEFINE_boolean('sliding_window', None, 'MR methods: sliding windows for videos longer than '
                                'max_v_l (default: the saved config\'s predict.sliding_window).')
flags.mark_flags_as_required(['workdir', 'annotations', 'features', 'out'])


def main(argv):
  del argv
  options = {} if _SLIDING.value is None else {'sliding_window': _SLIDING.value}
  predictor = Predictor(_WORKDIR.value, which=_WHICH.value, **options)
  rows = predictor.predict_files(_ANNOTATIONS.value, _FEATURES.value)
  predictor.write(rows, _OUT.value)
  count = len(rows) if isinstance(rows, list) else len(rows.get('cap_ids', rows))
  print(f'wrote {count} predictions to {_OUT.value}')
  if _PLOTS.value:
    records = annotations.load_many(_ANNOTATIONS.value)
    n = plots.plot_submission(_PLOTS.value, rows, {r.qid: r.to_json() for r in records},
                              max_plots=_MAX_PLOTS.value)
    print(f'wrote {n} plots to {pathlib.Path(_PLOTS.value)}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
