"""Shared bits of the launch scripts: one-line errors instead of tracebacks for bad input, tables.

Every script calls `run(main)`; expected failures (bad data, bad flags, missing files) exit 1 with a reason.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

EXPECTED_ERRORS = (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError)
PROJECT_ERRORS = ('FeatureError', 'AnnotationError', 'TrainingError', 'SubmissionError', 'InputError')


def run(main, jax_cache: bool = False) -> None:
  """absl.app.run(main) with one-line errors; `jax_cache` turns on the persistent XLA cache first."""
  from absl import app  # pylint: disable=import-outside-toplevel

  def guarded(argv):
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    if jax_cache and os.environ.get('AMR_JAX_NO_CACHE') != '1':
      from amr_jax import jax_setup  # pylint: disable=import-outside-toplevel
      jax_setup.enable_compilation_cache()
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, EXPECTED_ERRORS) and type(e).__name__ not in PROJECT_ERRORS:
        raise
      # bad user input: one line, no traceback
      if os.environ.get('AMR_JAX_DEBUG'):
        raise
      msg = str(e).strip()
      first, _, rest = msg.partition('\n')
      print(f'error: {type(e).__name__}: {first}', file=sys.stderr)
      if rest:
        print(rest, file=sys.stderr)
      sys.exit(1)

  app.run(guarded)


def metrics_table(metrics: dict) -> str:
  keys = [k for k, v in metrics.items() if isinstance(v, (int, float))]
  width = max((len(k) for k in keys), default=10)
  return '\n'.join(f'{k:<{width}}  {metrics[k]}' for k in keys)
