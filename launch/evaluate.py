"""Official MR/HD metrics of a submission jsonl: writes the official JSON and prints its brief block.

Usage: launch/evaluate.py --task=TYPE --submission=F --annotations=F --out=F (TYPE: amr_jax/metrics/registry.py)
Bad input (missing file, bad JSON line, validation problems) exits 1 with one line per problem on stderr.
"""
import gc
import json
import os
import sys

for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')  # no BLAS here: skip starting (and spinning) its thread pool at numpy import

from amr_jax.metrics import registry  # names only: no metric code (or numpy) is loaded before the flags parse

TASKS = tuple(registry.names())
FLAG_NAMES = ('task', 'submission', 'annotations', 'out')
_HELP_FLAGS = ('-h', '-help', '--help', '-?', '--helpshort', '--helpfull', '--helpxml')


def _define_flags():
  """The absl flags of this script (defined only when absl parses: see `fast_flags`)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_enum('task', None, list(TASKS), 'Which official evaluator.')
  flags.DEFINE_string('submission', None, 'Submission jsonl (QVHighlights format).')
  flags.DEFINE_string('annotations', None, 'Ground-truth annotation jsonl.')
  flags.DEFINE_string('out', None, 'Where to write the metrics JSON (json.dumps(result, indent=4)).')
  flags.mark_flags_as_required(list(FLAG_NAMES))
  return flags


def fast_flags(args: list) -> dict | None:
  """The four flags when every argument is `--name=value` once each (the documented form), else None.

  Importing absl.flags costs ~60 ms, 15% of this whole process (mostly `importlib.abc`, which absl imports).
  Anything else (help, the `--name value` form, repeats, unknown flags, a bad task) goes to absl, which
  parses it with its full syntax and error messages; for the documented form both give the same values.
  """
  values = {}
  for arg in args:
    name, eq, value = arg[2:].partition('=')
    if not arg.startswith('--') or not eq or not value or name not in FLAG_NAMES or name in values:
      return None
    values[name] = value
  if len(values) != len(FLAG_NAMES) or values['task'] not in TASKS:
    return None
  return values


def _keep_freed_memory() -> None:
  """Asks glibc to reuse freed heap memory instead of returning it to the OS after each large numpy temporary.

  This short-lived process allocates and frees many MB-sized arrays; with the default thresholds each of them is
  a fresh mmap and its pages fault in again (about half of the process's page faults). Harmless elsewhere.
  """
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
  except (OSError, AttributeError):
    pass


def main(values: dict) -> int:
  from amr_jax.metrics import common  # pylint: disable=import-outside-toplevel  (after flags: startup speed)
  evaluator = registry.get(values['task'])
  try:
    result = evaluator.evaluate_files(values['submission'], values['annotations'])
    common.write_json(values['out'], result)
  except common.SubmissionError as e:
    for problem in e.problems:  # every problem, one line each; nothing is written
      print(f'error: {problem}', file=sys.stderr)
    return 1
  except (common.InputError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(evaluator.brief(result), indent=4))
  return 0


def run() -> None:
  """Flag parsing without absl.app (whose import alone costs ~0.1 s, mostly pdb); help goes to absl.app.

  The cyclic GC is off (this short-lived process builds ~10^5 small objects and no cycles that matter), and the
  process ends with os._exit once its output is written and flushed: tearing down the interpreter (numpy,
  hundreds of thousands of parsed JSON objects) would cost more than a third of the evaluation itself.
  """
  gc.disable()
  values = fast_flags(sys.argv[1:])
  if values is None:
    flags = _define_flags()
    if any(arg.split('=')[0] in _HELP_FLAGS for arg in sys.argv[1:]):
      from absl import app  # pylint: disable=import-outside-toplevel
      app.run(lambda argv: None)
    try:
      argv = flags.FLAGS(sys.argv)
    except flags.Error as e:
      print('error: ' + '; '.join(str(e).splitlines()), file=sys.stderr)
      sys.exit(1)
    if len(argv) > 1:
      print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
      sys.exit(1)
    values = {name: flags.FLAGS[name].value for name in FLAG_NAMES}
  _keep_freed_memory()
  code = main(values)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


if __name__ == '__main__':
  run()
