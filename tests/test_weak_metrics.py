"""Weak-MR metrics: bit-exact against the original CPL evaluation (fixture cpl_reference/eval), and the file evaluator.

The fixture's 40 queries were scored by the original `MainRunner.eval` in test batches of 32 + 8.
"""
import json

import numpy as np
import pytest

from amr_jax.metrics import common
from amr_jax.metrics import weak_mr

from conftest import FIXTURES

EVAL = FIXTURES / 'cpl_reference' / 'eval'
MODES = ('loss', 'vote_charades', 'vote_activitynet')


@pytest.fixture(scope='module')
def fixture():
  arrays = np.load(EVAL / 'eval_arrays.npz')
  metrics = json.loads((EVAL / 'metrics.json').read_text())
  predictions = json.loads((EVAL / 'predictions.json').read_text())
  return {k: arrays[k] for k in arrays.files}, metrics, predictions


def top1_of(arrays, mode):
  ranked = arrays['ranked_windows_norm_f32']
  if mode == 'loss':
    return None
  return ranked[np.arange(len(ranked)), arrays[f'{mode}_rank']]


def test_iou_matches_the_original_per_proposal(fixture):
  arrays, _, _ = fixture
  ranked, gt = arrays['ranked_windows_norm_f32'], arrays['gt_norm']
  iou = weak_mr.cpl_iou(ranked[..., 0], ranked[..., 1], gt[:, None, 0], gt[:, None, 1])
  np.testing.assert_array_equal(iou, arrays['iou_ranked'])
  assert iou[0, 0] == 1.0                      # q0: top-1 = GT
  assert not iou[1].any()                      # q1: every proposal disjoint
  assert 0 < iou[2, 0] < 1e-9                  # q2: touching windows get 1e-10 / hull
  assert all(iou[q, 0] >= t for q, t in zip((3, 4, 5, 6), (0.3, 0.5, 0.7, 0.9)))   # exact thresholds count


def test_iou_rules():
  # reversed prediction (hull < -1e-5) -> 0; disjoint -> 0; float32 inputs are promoted before the arithmetic.
  assert weak_mr.cpl_iou([0.6], [0.4], [0.8], [0.2])[0] == 0.0
  assert weak_mr.cpl_iou([0.0], [0.2], [0.5], [0.9])[0] == 0.0
  start = np.float32(0.1)                      # 0.10000000149...: promoted exactly, then float64 arithmetic
  expected = (0.5 - float(start) + 1e-10) / (0.5 - 0.1 + 1e-10)
  assert weak_mr.cpl_iou(np.array([start]), np.array([0.5], np.float32), [0.1], [0.5])[0] == expected


@pytest.mark.parametrize('mode', MODES)
def test_metrics_bit_exact_with_the_original_batched_meter(fixture, mode):
  arrays, reference, _ = fixture
  got = weak_mr.weak_mr_metrics(arrays['ranked_windows_norm_f32'], arrays['gt_norm'],
                                top1_windows=top1_of(arrays, mode))
  expected = reference['original_MainRunner_eval'][mode]
  assert list(got) == list(expected)           # same keys, same order
  assert got == expected                       # every value bit-exact (recall and mIoU)


@pytest.mark.parametrize('mode', MODES)
def test_single_batch_meter_matches_the_unbatched_statements(fixture, mode):
  arrays, reference, _ = fixture
  got = weak_mr.weak_mr_metrics(arrays['ranked_windows_norm_f32'], arrays['gt_norm'],
                                top1_windows=top1_of(arrays, mode), meter_batch_size=0)
  assert got == reference['same_statements_single_batch'][mode]


def test_metrics_from_seconds(fixture):
  arrays, reference, _ = fixture
  duration = arrays['durations_sec']
  got = weak_mr.weak_mr_metrics(arrays['ranked_windows_sec'] / duration[:, None, None],
                                arrays['gt_sec'] / duration[:, None])
  expected = reference['original_MainRunner_eval']['loss']
  for key, value in expected.items():
    if key.endswith('mIoU'):
      assert abs(got[key] - value) < 1e-12, key
    else:
      assert got[key] == value, key


def test_reported_subsets(fixture):
  arrays, _, _ = fixture
  metrics = weak_mr.weak_mr_metrics(arrays['ranked_windows_norm_f32'], arrays['gt_norm'])
  charades = weak_mr.reported(metrics, 'charades')
  assert sorted(charades) == sorted(f'R@{n},{k}' for n in (1, 5) for k in ('mIoU', 'IoU@0.3', 'IoU@0.5', 'IoU@0.7'))
  assert charades['R@1,IoU@0.5'] == pytest.approx(55.0)
  anet = weak_mr.reported(metrics, 'activitynet')
  assert 'R@1,IoU@0.1' in anet and 'R@1,IoU@0.7' not in anet


def test_true_iou_alternative(fixture):
  arrays, reference, _ = fixture
  ranked, gt = arrays['ranked_windows_norm_f32'], arrays['gt_norm']
  true = weak_mr.weak_mr_metrics(ranked, gt, iou='true')
  cpl = reference['original_MainRunner_eval']['loss']
  assert true['R@1,IoU@0.5'] == cpl['R@1,IoU@0.5'] and abs(true['R@1,mIoU'] - cpl['R@1,mIoU']) < 1e-8
  assert weak_mr.window_iou(0.0, 0.2, 0.2, 0.4, 'true') == 0.0 and weak_mr.window_iou(0.0, 0.2, 0.2, 0.4) > 0
  with pytest.raises(ValueError, match='unknown IoU rule'):
    weak_mr.window_iou(0, 1, 0, 1, 'giou')


def test_top_n_key_follows_the_proposal_count(fixture):
  arrays, _, _ = fixture
  metrics = weak_mr.weak_mr_metrics(arrays['ranked_windows_norm_f32'][:, :3], arrays['gt_norm'])
  assert 'R@3,mIoU' in metrics and 'R@5,mIoU' not in metrics


# ----------------------------------------------------------------------------------------------------
# File evaluator
# ----------------------------------------------------------------------------------------------------
def write_cpl_annotations(path, predictions):
  rows = [[f'vid{i}', p['duration_sec'], p['gt_sec'], 'a person opens a door.'] for i, p in enumerate(predictions)]
  path.write_text(json.dumps(rows))


def write_prediction_rows(path, predictions, mode='loss', key='qid'):
  with open(path, 'w') as f:
    for i, p in enumerate(predictions):
      row = {key: i, 'vid': f'vid{i}', 'pred_windows_sec': p['top5_sec']}
      if mode != 'loss':
        row['pred_top1_sec'] = p['ranked_windows_sec'][p[f'{mode}_rank']]
      f.write(json.dumps(row) + '\n')


@pytest.mark.parametrize('mode', MODES)
def test_file_evaluator_reproduces_the_original(fixture, tmp_path, mode):
  _, reference, predictions = fixture
  write_cpl_annotations(tmp_path / 'test.json', predictions)
  write_prediction_rows(tmp_path / 'preds.jsonl', predictions, mode)
  got = weak_mr.evaluate_weak_files(tmp_path / 'preds.jsonl', tmp_path / 'test.json')
  expected = reference['original_MainRunner_eval'][mode]
  assert list(got) == list(expected)
  for key, value in expected.items():
    if key.endswith('mIoU'):
      assert abs(got[key] - value) < 1e-12, key
    else:
      assert got[key] == value, key


def test_file_evaluator_accepts_id_key_and_write_predictions(fixture, tmp_path):
  arrays, reference, predictions = fixture
  write_cpl_annotations(tmp_path / 'test.json', predictions)
  write_prediction_rows(tmp_path / 'a.jsonl', predictions, key='id')
  a = weak_mr.evaluate_weak_files(tmp_path / 'a.jsonl', tmp_path / 'test.json')
  weak_mr.write_predictions(tmp_path / 'b.jsonl', np.arange(40), [f'vid{i}' for i in range(40)],
                            arrays['ranked_windows_sec'][:, :5])
  b = weak_mr.evaluate_weak_files(tmp_path / 'b.jsonl', tmp_path / 'test.json')
  assert a == b
  assert a['R@1,IoU@0.5'] == reference['original_MainRunner_eval']['loss']['R@1,IoU@0.5']


def test_file_evaluator_reports_every_problem_one_line_each(fixture, tmp_path):
  _, _, predictions = fixture
  write_cpl_annotations(tmp_path / 'test.json', predictions[:4])
  rows = [
      {'qid': 0, 'vid': 'vid0', 'pred_windows_sec': [[1.0, 2.0]]},
      {'qid': 0, 'vid': 'vid0', 'pred_windows_sec': [[1.0, 2.0]]},            # duplicate
      {'qid': 1, 'vid': 'vid1', 'pred_windows_sec': [[1.0]]},                  # malformed window
      {'qid': 2, 'vid': 'other', 'pred_windows_sec': [[1.0, 2.0]]},            # wrong vid
      {'qid': 99, 'pred_windows_sec': [[1.0, 2.0]]},                           # not annotated
      {'vid': 'vid3', 'pred_windows_sec': [[1.0, 2.0]]},                       # no qid
  ]
  (tmp_path / 'p.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  with pytest.raises(common.SubmissionError) as info:
    weak_mr.evaluate_weak_files(tmp_path / 'p.jsonl', tmp_path / 'test.json')
  problems = info.value.problems
  assert all('\n' not in p for p in problems)
  text = '\n'.join(problems)
  for needle in ('p.jsonl:2: qid=0 field=qid: duplicate', 'p.jsonl:3: qid=1 field=pred_windows_sec',
                 'qid=2 field=vid', 'qid=99 field=qid: not in', 'p.jsonl:6: field=qid',
                 'qid=1 field=qid: no prediction', 'qid=3 field=qid: no prediction'):
    assert needle in text, (needle, text)


def test_file_evaluator_needs_durations(tmp_path):
  (tmp_path / 'a.txt').write_text('VID1 1.0 3.0##a person opens a door.\n')
  (tmp_path / 'p.jsonl').write_text(json.dumps({'qid': 0, 'pred_windows_sec': [[1.0, 3.0]]}) + '\n')
  with pytest.raises(common.SubmissionError, match='field=duration'):
    weak_mr.evaluate_weak_files(tmp_path / 'p.jsonl', tmp_path / 'a.txt')
  got = weak_mr.evaluate_weak_files(tmp_path / 'p.jsonl', tmp_path / 'a.txt', durations={'VID1': 10.0})
  assert got['R@1,IoU@0.9'] == 1.0 and got['R@1,mIoU'] == 1.0
