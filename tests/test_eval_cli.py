"""launch/evaluate.py as a user runs it (subprocess), and submission validation messages.

Bad input must exit 1 with one line per problem on stderr and no traceback.
"""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from amr_jax.metrics import api, registry, submission

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL = ROOT / 'tests' / 'fixtures' / 'eval'
QVH_VAL = ROOT / 'data' / 'annotations' / 'qvhighlights' / 'highlight_val_release.jsonl'


def _evaluate_cli(*args):
  return subprocess.run([sys.executable, 'launch/evaluate.py', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)


def test_cli_writes_the_official_file_and_prints_brief(tmp_path):
  out = tmp_path / 'sub' / 'metrics.json'
  proc = _evaluate_cli('--task=qvh', f'--submission={EVAL / "qvh_val_preds_A.jsonl"}',
                       f'--annotations={QVH_VAL}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  expected = (EVAL / 'qvh_val_preds_A_metrics.json').read_text()
  assert out.read_text() == expected
  assert json.loads(proc.stdout) == json.loads(expected)['brief']


def _write_jsonl(path, rows):
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
  return path


GT = [{'qid': q, 'duration': 150, 'relevant_windows': [[10, 20]]} for q in (1, 2, 3, 4, 5)]


def test_cli_missing_file_one_line(tmp_path):
  gt = _write_jsonl(tmp_path / 'gt.jsonl', GT)
  proc = _evaluate_cli('--task=charades', f'--submission={tmp_path / "nope.jsonl"}', f'--annotations={gt}',
                       f'--out={tmp_path / "m.json"}')
  assert proc.returncode == 1
  assert proc.stderr.strip().count('\n') == 0 and 'nope.jsonl' in proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'm.json').exists()


def test_cli_bad_json_line_names_its_number(tmp_path):
  gt = _write_jsonl(tmp_path / 'gt.jsonl', GT)
  rows = [{'qid': 1, 'pred_relevant_windows': [[10, 20, 1.0]]}, {'qid': 2, 'pred_relevant_windows': []},
          '{"qid": 3, "pred_relevant_windows": [[1, 2, 0.5]']
  rows += [{'qid': q, 'pred_relevant_windows': []} for q in (4, 5)]
  sub = _write_jsonl(tmp_path / 'sub.jsonl', rows)
  proc = _evaluate_cli('--task=charades', f'--submission={sub}', f'--annotations={gt}', f'--out={tmp_path / "m.json"}')
  assert proc.returncode == 1
  assert proc.stderr.strip().count('\n') == 0 and 'sub.jsonl:3:' in proc.stderr and 'Traceback' not in proc.stderr


def test_cli_validation_problems_all_listed(tmp_path):
  gt = _write_jsonl(tmp_path / 'gt.jsonl', GT)
  rows = [{'qid': 1, 'pred_relevant_windows': [[10, 20, float('nan')]]},   # NaN score
          {'qid': 2, 'pred_relevant_windows': [[10, 20]]},                 # malformed window
          '[1, 2, 3]',                                                     # malformed row
          {'qid': 99, 'pred_relevant_windows': []},                        # unknown qid
          {'qid': 4, 'pred_relevant_windows': [[1, 'a', 0.5]]}]            # non-numeric; qids 3 and 5 missing
  sub = _write_jsonl(tmp_path / 'sub.jsonl', rows)
  proc = _evaluate_cli('--task=qvm2', f'--submission={sub}', f'--annotations={gt}', f'--out={tmp_path / "m.json"}')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 7, lines
  text = proc.stderr
  for needle in ('sub.jsonl: qid 1: pred_relevant_windows[0]', 'sub.jsonl: qid 2: pred_relevant_windows[0]',
                 'sub.jsonl: line 3: row is not a JSON object', 'sub.jsonl: qid 99: unknown qid',
                 'sub.jsonl: qid 4: pred_relevant_windows[0]', 'sub.jsonl: qid 3: missing',
                 'sub.jsonl: qid 5: missing'):
    assert needle in text, needle


def test_cli_bad_flag_value(tmp_path):
  proc = _evaluate_cli('--task=nope', '--submission=a', '--annotations=b', f'--out={tmp_path / "m.json"}')
  assert proc.returncode == 1 and proc.stderr.strip().count('\n') == 0 and 'Traceback' not in proc.stderr


def test_cli_absl_forms_give_the_same_file(tmp_path):
  """`--name value` and repeated flags go through absl instead of the fast parser; the result is the same."""
  sub = EVAL / 'qvh_val_preds_A.jsonl'
  fast, spaced = tmp_path / 'fast.json', tmp_path / 'spaced.json'
  assert _evaluate_cli('--task=qvh', f'--submission={sub}', f'--annotations={QVH_VAL}', f'--out={fast}').returncode == 0
  proc = _evaluate_cli('--task', 'qvh', '--submission', str(sub), '--annotations', str(QVH_VAL), '--out=x',
                       f'--out={spaced}')
  assert proc.returncode == 0, proc.stderr
  assert spaced.read_text() == fast.read_text()


def test_cli_task_list_is_the_registry_one():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('evaluate_cli', ROOT / 'launch' / 'evaluate.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.TASKS == tuple(registry.names()) and set(api.TASKS) <= set(module.TASKS)


def test_cli_missing_flag_and_extra_argument(tmp_path):
  proc = _evaluate_cli('--task=qvh', '--submission=a', f'--out={tmp_path / "m.json"}')
  assert proc.returncode == 1 and '--annotations' in proc.stderr and 'Traceback' not in proc.stderr
  proc = _evaluate_cli('--task=qvh', '--submission=a', '--annotations=b', f'--out={tmp_path / "m.json"}', 'extra')
  assert proc.returncode == 1 and 'unexpected arguments: extra' in proc.stderr


def test_validate_names_every_problem_in_one_run():
  gt = [{'qid': q, 'duration': 10, 'relevant_windows': [[0, 4]], 'relevant_clip_ids': [0, 1],
         'saliency_scores': [[4, 4, 4], [1, 1, 1]]} for q in (1, 2, 3)]
  gt.append({'qid': 4, 'duration': 10, 'relevant_windows': [[0, 4]]})          # no saliency labels
  sub = [{'qid': 1, 'pred_relevant_windows': [[0, 4, 1.0]], 'pred_saliency_scores': [1, math.inf]},
         {'qid': 2, 'pred_relevant_windows': [[0, 4, 1.0]]},                  # saliency missing
         {'qid': 2, 'pred_relevant_windows': [[0, 4, 1.0]], 'pred_saliency_scores': []},   # duplicate
         {'qid': 4, 'pred_relevant_windows': [[0, 4, 1.0]], 'pred_saliency_scores': [1.0]},
         'not a row']
  problems = submission.validate('qvh', sub, gt, submission_name='s.jsonl', annotations_name='g.jsonl')
  text = '\n'.join(problems)
  assert 's.jsonl: qid 2: pred_saliency_scores missing' in text
  assert 's.jsonl: qid 2: duplicate qid' in text
  assert 's.jsonl: row 5: row is not a JSON object' in text
  assert 's.jsonl: qid 3: missing' in text
  assert 's.jsonl: qid 1: pred_saliency_scores[1] = inf is not a finite number' in text
  assert 'g.jsonl: qid 4: relevant_clip_ids and saliency_scores are needed' in text
  with pytest.raises(submission.SubmissionError) as error:
    api.evaluate('qvh', sub, gt)
  assert error.value.problems == [p.replace('s.jsonl', 'submission').replace('g.jsonl', 'annotations')
                                  for p in problems]


def test_unlabelled_annotations_are_rejected():
  gt = [{'qid': 1, 'duration': 150}]
  problems = submission.validate('qvh', [{'qid': 1, 'pred_relevant_windows': []}], gt)
  assert problems == ['annotations: qid 1: no relevant_windows (an unlabelled split cannot be scored)']
