"""QV-M² (FlashMMR) metrics: the golden fixture reproduced exactly, R@k/mIoU@k cross-check, degenerate buckets.

The golden file is the official QV-M2 script's own output (tests/fixtures/eval/README.md).
"""
import json
import pathlib

import numpy as np

from amr_jax.metrics import api, qvm2
from amr_jax.metrics.submission import prepare
from conftest import flat_items

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL = ROOT / 'tests' / 'fixtures' / 'eval'
QVM2_TEST = ROOT / 'data' / 'annotations' / 'qv-m2' / 'test.jsonl'



def test_fixture_a_every_number_key_and_order_and_bytes():
  result = api.evaluate_files('qvm2', EVAL / 'qvm2_test_preds_A.jsonl', QVM2_TEST)
  text = (EVAL / 'qvm2_test_preds_A_metrics.json').read_text()
  assert flat_items(result) == flat_items(json.loads(text))
  assert json.dumps(result, indent=4) == text
  # mR is the numpy-rounded mean of the already-rounded R@k values, not the rounded mean of raw recalls
  assert result['full']['MR-mR3'] == float(np.round(np.mean(list(result['full']['MR-R3'].values())), 2))


def _iou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union else 0.0


def _reference_recall_and_miou(sub, gt):
  """R@k / mIoU@k from the README definition, one query at a time."""
  recalls, mious = {}, {}
  for k in (1, 2, 3):
    recalls[k] = {}
    for t in qvm2.RECALL_THRESHOLDS + (-1.0,):
      matched, total, ious = 0, 0, []
      for s, g in zip(sub, gt):
        preds, gts = s['pred_relevant_windows'][:3], g['relevant_windows']
        if len(gts) < k or len(preds) < k:
          continue
        taken = set()
        for p in preds[:k]:
          best, best_j = -1.0, None
          for j, w in enumerate(gts):
            if j not in taken and _iou(p, w) > best:
              best, best_j = _iou(p, w), j
          if best_j is not None and best >= t:
            taken.add(best_j)
            ious.append(best)
        matched += len(taken)
        total += min(len(gts), k)
      if t == -1.0:
        mious[k] = float(f'{np.mean(ious) * 100:.2f}') if ious else 0.0
      else:
        recalls[k][f'{t:.2f}'] = float(f'{matched / total * 100:.2f}') if total else 0.0
  return recalls, mious


def test_recall_and_miou_match_reference():
  rng = np.random.default_rng(3)
  sub, gt = [], []
  for qid in range(150):
    gts = sorted([[float(s), float(s + 2 * rng.integers(1, 12))] for s in rng.integers(0, 60, rng.integers(1, 6)) * 2])
    preds = [([*gts[rng.integers(len(gts))]] if rng.random() < 0.4 else
              [float(rng.integers(0, 280)) / 2, 0.0]) for _ in range(rng.integers(0, 6))]
    preds = [[p[0], p[1] if p[1] > p[0] else p[0] + float(rng.integers(0, 30)), 0.5] for p in preds]
    sub.append({'qid': qid, 'pred_relevant_windows': preds})
    gt.append({'qid': qid, 'relevant_windows': gts})
  prepared = prepare('qvm2', sub, gt)
  miou, recalls = qvm2.recall_and_miou(prepared.pred_windows, prepared.gt_windows)
  want_recalls, want_mious = _reference_recall_and_miou(sub, gt)
  assert recalls == want_recalls
  assert miou == {f'MR-mIoU@{k}': want_mious[k] for k in (1, 2, 3)}


def test_bucket_without_one_target_queries_gives_null_and_empty_bucket_placeholder():
  gt = [{'qid': 1, 'relevant_windows': [[0, 4], [10, 16]]}, {'qid': 2, 'relevant_windows': [[20, 24], [40, 46]]}]
  sub = [{'qid': 1, 'pred_relevant_windows': [[0, 4, 0.9], [10, 16, 0.8]]}, {'qid': 2, 'pred_relevant_windows': []}]
  result = api.evaluate('qvm2', sub, gt)
  full = result['full']
  assert full['MR-mAP'] == {'1_tgt_mAP': None, '2_tgt_mAP': 100.0, '>=3_tgt_mAP': 0.0, 'Generalized_mAP': 100.0}
  assert full['MR-R2']['0.95'] == 100.0 and full['MR-mIoU@3'] == 0.0 and full['MR-R3']['0.50'] == 0.0
  assert list(result['long']) == ['MR-mAP', 'MR-R1'] and result['long']['MR-mAP']['average'] == 0.0
  assert len(result['long']['MR-mAP']) == 20
  assert list(result) == ['brief', 'full', 'long', 'middle', 'short']
  json.dumps(result)  # serialisable


def test_ge3_is_unweighted_mean_over_group_sizes():
  windows = [[i * 10, i * 10 + 4] for i in range(6)]
  gt = [{'qid': 1, 'relevant_windows': windows[:3]}, {'qid': 2, 'relevant_windows': windows[:3]},
        {'qid': 3, 'relevant_windows': windows}]
  sub = [{'qid': 1, 'pred_relevant_windows': [[*w, 1.0] for w in windows[:3]]},
         {'qid': 2, 'pred_relevant_windows': [[*w, 1.0] for w in windows[:3]]},
         {'qid': 3, 'pred_relevant_windows': [[100, 120, 1.0]]}]
  result = api.evaluate('qvm2', sub, gt)['full']['MR-mAP']
  assert result['>=3_tgt_mAP'] == 50.0            # mean of group 3 (AP 1) and group 6 (AP 0)
  assert result['Generalized_mAP'] == 66.67       # query-weighted
