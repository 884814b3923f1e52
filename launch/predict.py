"""Inference with the best (or last) checkpoint of a workdir, or an export: writes a submission jsonl.

`--config` is optional (the workdir's saved config is used); `--plots=DIR` writes per-query PNGs.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Unused when the workdir has config.json.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir or export directory.')
_ANNOTATIONS = flags.DEFINE_string('annotations', None, 'Annotation jsonl(s), comma-separated.')
_FEATURES = flags.DEFINE_string('features', None, 'Feature store root.')
_OUT = flags.DEFINE_string('out', None, 'Submission jsonl to write.')
_PLOTS = flags.DEFINE_string('plots', None, 'Directory for per-query PNG plots.')
_MAX_PLOTS = flags.DEFINE_integer('max_plots', 20, 'At most this many plots.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'last'], 'Checkpoint to use in a training workdir.')
_SLIDING = flags.DEFINE_boolean('sliding_window', True, 'Sliding windows for videos longer than max_v_l '
                                '(the reference truncates).')
flags.mark_flags_as_required(['workdir', 'annotations', 'features', 'out'])


def main(argv):
  del argv
  from amr_jax.data import annotations, features, validate  # pylint: disable=import-outside-toplevel
  from amr_jax.predictor import Predictor  # pylint: disable=import-outside-toplevel
  records = annotations.load_many(_ANNOTATIONS.value)
  predictor = Predictor(_WORKDIR.value, which=_WHICH.value, sliding_window=_SLIDING.value)
  store = features.FeatureStore(_FEATURES.value, max_v_l=10**9 if _SLIDING.value else predictor.spec.max_v_l)
  problems = validate.validate(records, store, max_v_l=store.max_v_l)
  if problems:
    raise ValueError(f'{len(problems)} data problem(s):\n' + '\n'.join(str(p) for p in problems))
  rows = predictor.predict(records, store)
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  print(f'wrote {len(rows)} predictions to {out}')
  if _PLOTS.value:
    from amr_jax.eval import plots  # pylint: disable=import-outside-toplevel
    n = plots.plot_submission(_PLOTS.value, rows, {r.qid: r.to_json() for r in records},
                              max_plots=_MAX_PLOTS.value)
    print(f'wrote {n} plots to {_PLOTS.value}')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
