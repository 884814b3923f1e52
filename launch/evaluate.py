"""Official MR/HD metrics of a submission jsonl: writes the official JSON and prints its brief block.

Usage: launch/evaluate.py --task=qvh|qvm2|charades --submission=F --annotations=F --out=F
Bad input (missing file, bad JSON line, validation problems) exits 1 with one line per problem on stderr.
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')  # no BLAS here: skip starting (and spinning) its thread pool at numpy import

from absl import flags  # noqa: E402

_TASK = flags.DEFINE_enum('task', None, ['qvh', 'qvm2', 'charades'], 'Which official evaluator.')
_SUBMISSION = flags.DEFINE_string('submission', None, 'Submission jsonl (QVHighlights format).')
_ANNOTATIONS = flags.DEFINE_string('annotations', None, 'Ground-truth annotation jsonl.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the metrics JSON (json.dumps(result, indent=4)).')
flags.mark_flags_as_required(['task', 'submission', 'annotations', 'out'])

_HELP_FLAGS = ('-h', '-help', '--help', '-?', '--helpshort', '--helpfull', '--helpxml')


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


def main(argv) -> int:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 1
  from amr_jax.eval import api, common  # pylint: disable=import-outside-toplevel
  submission_path, annotations_path = pathlib.Path(_SUBMISSION.value), pathlib.Path(_ANNOTATIONS.value)
  try:
    submission_rows, submission_lines = common.load_jsonl(submission_path)
    gt_rows, gt_lines = common.load_jsonl(annotations_path)
    result = api.evaluate(_TASK.value, submission_rows, gt_rows, submission_name=submission_path.name,
                          annotations_name=annotations_path.name, submission_lines=submission_lines,
                          annotations_lines=gt_lines)
    common.write_json(_OUT.value, result)
  except common.SubmissionError as e:
    for problem in e.problems:  # every problem, one line each; nothing is written
      print(f'error: {problem}', file=sys.stderr)
    return 1
  except (common.InputError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(api.brief(_TASK.value, result), indent=4))
  return 0


def run() -> None:
  """absl flag parsing without absl.app (whose import alone costs ~0.1 s, mostly pdb); help goes to absl.app.

  The process ends with os._exit once its output is written and flushed: tearing down the interpreter (numpy,
  hundreds of thousands of parsed JSON objects) would cost more than a third of the evaluation itself.
  """
  if any(arg.split('=')[0] in _HELP_FLAGS for arg in sys.argv[1:]):
    from absl import app  # pylint: disable=import-outside-toplevel
    app.run(main)
  _keep_freed_memory()
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    print('error: ' + '; '.join(str(e).splitlines()), file=sys.stderr)
    sys.exit(1)
  code = main(argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


if __name__ == '__main__':
  run()
