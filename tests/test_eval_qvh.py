"""QVHighlights (moment_detr) metrics: golden fixtures reproduced exactly, cross-checks, crash cases.

The golden files are the official scripts' own outputs (tests/fixtures/eval/README.md).
"""
import json
import pathlib

import numpy as np
import pytest

from amr_jax.metrics import api, common, qvh
from amr_jax.metrics.submission import prepare
from conftest import flat_items

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL = ROOT / 'tests' / 'fixtures' / 'eval'
QVH_VAL = ROOT / 'data' / 'annotations' / 'qvhighlights' / 'highlight_val_release.jsonl'
SAMPLE = ROOT / 'data' / 'annotations' / 'qvhighlights' / 'standalone_eval'



@pytest.fixture(scope='module')
def fixture_a_result():
  return api.evaluate_files('qvh', EVAL / 'qvh_val_preds_A.jsonl', QVH_VAL)


def test_fixture_a_every_number_key_and_order(fixture_a_result):
  want = json.loads((EVAL / 'qvh_val_preds_A_metrics.json').read_text())
  assert flat_items(fixture_a_result) == flat_items(want)
  assert all(type(v) is float for _, v in flat_items(fixture_a_result))


def test_fixture_a_byte_identical(fixture_a_result):
  assert json.dumps(fixture_a_result, indent=4) == (EVAL / 'qvh_val_preds_A_metrics.json').read_text()


def test_moment_detr_sample_predictions():
  result = api.evaluate_files('qvh', SAMPLE / 'sample_val_preds.jsonl', QVH_VAL)
  want = json.loads((SAMPLE / 'sample_val_preds_metrics_raw.json').read_text())
  assert flat_items(result) == flat_items(want)


# ------------------------------------------------------------------------------------------------------------
# Cross-checks against straightforward per-query implementations written from the metric definitions
# ------------------------------------------------------------------------------------------------------------
def _reference_ap(preds, gts, thresholds=common.MR_AP_THRESHOLDS):
  """Per-query AP as the official loop computes it (one query, plain Python)."""
  preds = sorted(preds[:10], key=lambda w: -w[2])
  gts = np.asarray(gts, dtype=np.float64)
  ap = []
  for t in thresholds:
    locked, tp, fp = set(), [], []
    for st, ed, _ in preds:
      inter = np.maximum(np.minimum(ed, gts[:, 1]) - np.maximum(st, gts[:, 0]), 0)
      with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / ((ed - st) + (gts[:, 1] - gts[:, 0]) - inter)
      iou = np.nan_to_num(iou)
      hit = False
      for j in iou.argsort()[::-1]:
        if iou[j] < t:
          break
        if j in locked:
          continue
        locked.add(j)
        hit = True
        break
      tp.append(hit)
      fp.append(not hit)
    tp_cum, fp_cum = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    m_prec = np.hstack([[0], tp_cum / (tp_cum + fp_cum), [0]])
    m_rec = np.hstack([[0], tp_cum / len(gts), [1]])
    for i in range(len(m_prec) - 1)[::-1]:
      m_prec[i] = max(m_prec[i], m_prec[i + 1])
    idx = np.where(m_rec[1:] != m_rec[:-1])[0] + 1
    ap.append(np.sum((m_rec[idx] - m_rec[idx - 1]) * m_prec[idx]))
  return np.array(ap)


def _hostile_queries(rng, num_queries):
  """Random queries with grid-aligned GTs and hostile predictions (ties, duplicates, degenerate, >10)."""
  sub, gt = [], []
  for qid in range(num_queries):
    num_gt = int(rng.choice([1, 1, 2, 3, 5, 9]))
    starts = rng.integers(0, 70, num_gt) * 2
    gts = [[float(s), float(min(s + 2 * rng.integers(1, 20), 150))] for s in starts]
    preds = []
    for _ in range(int(rng.integers(1, 15))):
      kind = rng.integers(0, 5)
      if kind == 0:
        st, ed = gts[rng.integers(num_gt)]
      elif kind == 1:
        st = float(rng.integers(0, 300)) / 2
        ed = st + float(rng.integers(0, 40)) / 2
      elif kind == 2 and preds:
        st, ed = preds[-1][:2]
      else:
        st = float(rng.uniform(-5, 150))
        ed = st + float(rng.uniform(0, 50))
      preds.append([st, ed, float(rng.choice([0.5, 0.25, round(rng.uniform(), 2)]))])
    sub.append({'qid': qid, 'pred_relevant_windows': preds})
    gt.append({'qid': qid, 'relevant_windows': gts})
  return sub, gt


def test_ap_matches_reference_loop_bit_for_bit():
  rng = np.random.default_rng(7)
  sub, gt = _hostile_queries(rng, 300)
  prepared = prepare('qvh', sub, gt)
  got = qvh.average_precision_per_query(prepared.pred_windows, prepared.gt_windows)
  want = np.stack([_reference_ap(s['pred_relevant_windows'], g['relevant_windows']) for s, g in zip(sub, gt)])
  np.testing.assert_array_equal(got, want)


def _reference_hl_ap(y_true, y_score):
  """get_ap() with sklearn's precision_recall_curve replaced by its definition (README)."""
  if len(set(y_true)) == 1:
    return float(y_true[0] != 0)
  order = np.argsort(y_score, kind='mergesort')[::-1]
  scores, labels = y_score[order], y_true[order]
  ends = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]
  tps = np.cumsum(labels)[ends]
  fps = 1 + ends - tps
  precision = np.hstack([(tps / (tps + fps))[::-1], 1])
  recall = np.hstack([(tps / tps[-1])[::-1], 0]).astype(np.float32)
  for i in range(1, len(precision)):
    precision[i] = max(precision[i - 1], precision[i])
  return np.mean(precision[np.where(np.diff(recall))])


def _hl_case(rng, num_queries):
  sub, gt = [], []
  for qid in range(num_queries):
    duration = int(rng.integers(3, 80))
    num_clips = duration // 2
    ids = sorted(rng.choice(num_clips, size=int(rng.integers(1, num_clips + 1)), replace=False).tolist())
    scores = rng.integers(0, 5, (len(ids), 3)).tolist()
    length = int(rng.integers(0, num_clips + 6))
    kind = rng.integers(0, 3)
    saliency = (rng.integers(-2, 3, length) if kind == 0 else np.round(rng.normal(size=length), 1)
                if kind == 1 else np.full(length, 0.5)).tolist()
    sub.append({'qid': qid, 'pred_relevant_windows': [[0, 2, 1.0]], 'pred_saliency_scores': saliency})
    gt.append({'qid': qid, 'duration': duration, 'relevant_windows': [[0, 2]], 'relevant_clip_ids': ids,
               'saliency_scores': scores})
  return sub, gt


def _dense_grids(sub, gt):
  """Per query: the GT score grid [num_clips, 3] and the prediction padded with 0 to num_clips."""
  for s, g in zip(sub, gt):
    num_clips = g['duration'] // 2
    grid = np.zeros((num_clips, 3))
    grid[g['relevant_clip_ids']] = g['saliency_scores']
    pred = np.zeros(num_clips)
    scores = np.asarray(s['pred_saliency_scores'], dtype=float)[:num_clips]
    pred[:len(scores)] = scores
    yield grid, pred


@pytest.mark.parametrize('min_score', [2, 3, 4])
def test_highlight_ap_matches_reference_bit_for_bit(min_score):
  rng = np.random.default_rng(min_score)
  sub, gt = _hl_case(rng, 200)
  got = qvh.highlight_ap_per_query(prepare('qvh', sub, gt), min_score)
  for q, (grid, pred) in enumerate(_dense_grids(sub, gt)):
    for a in range(3):
      assert got[q, a] == _reference_hl_ap((grid[:, a] >= min_score).astype(float), pred), (q, a)


def test_highlight_ap_matches_sklearn():
  from sklearn import metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(11)
  sub, gt = _hl_case(rng, 60)
  got = qvh.highlight_ap_per_query(prepare('qvh', sub, gt), 3)
  for q, (grid, pred) in enumerate(_dense_grids(sub, gt)):
    for a in range(3):
      y = (grid[:, a] >= 3).astype(float)
      if len(set(y)) == 1:
        continue
      precision, recall, _ = metrics.precision_recall_curve(y, pred)
      recall = recall.astype(np.float32)
      for i in range(1, len(precision)):
        precision[i] = max(precision[i - 1], precision[i])
      assert got[q, a] == np.mean(precision[np.where(np.diff(recall))])


@pytest.mark.parametrize('width', [1, 5, 8, 9, 16, 75, 129, 300])
def test_exact_column_sums_is_numpy_sum(width):
  rng = np.random.default_rng(width)
  values = rng.random((width, 400)) * 10.0 ** rng.integers(-4, 5, (width, 400))
  selected = rng.random((width, 400)) < rng.random(400)
  got = common.exact_column_sums(values, selected)
  want = [np.sum(values[:, j][selected[:, j]]) for j in range(400)]
  np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------------------------
# Where the official script crashes: documented values
# ------------------------------------------------------------------------------------------------------------
def _gt_row(qid, windows, duration=150, saliency=True):
  row = {'qid': qid, 'duration': duration, 'relevant_windows': windows}
  if saliency:
    row['relevant_clip_ids'] = [0, 1, 2]
    row['saliency_scores'] = [[4, 4, 4], [2, 2, 2], [0, 0, 0]]
  return row


def test_empty_window_list_is_an_r1_miss_and_skipped_in_ap():
  gt = [_gt_row(1, [[10, 30]], saliency=False), _gt_row(2, [[40, 60]], saliency=False)]
  sub = [{'qid': 1, 'pred_relevant_windows': [[10, 30, 0.9]]}, {'qid': 2, 'pred_relevant_windows': []}]
  result = api.evaluate('qvh', sub, gt)
  assert result['full']['MR-R1']['0.5'] == 50.0        # the empty query counts as a miss
  assert result['full']['MR-mAP']['average'] == 100.0  # ... and never enters the AP mean
  assert list(result) == ['brief', 'full', 'long', 'middle', 'short']


def test_bucket_whose_queries_all_have_empty_lists_has_null_map():
  gt = [_gt_row(1, [[10, 16]], saliency=False), _gt_row(2, [[40, 80]], saliency=False)]
  sub = [{'qid': 1, 'pred_relevant_windows': []}, {'qid': 2, 'pred_relevant_windows': [[40, 80, 1.0]]}]
  result = api.evaluate('qvh', sub, gt)
  assert result['short']['MR-mAP'] is None and result['brief']['MR-short-mAP'] is None
  assert result['short']['MR-R1']['0.5'] == 0.0
  assert result['long']['MR-mAP']['average'] == 100.0


def test_empty_bucket_is_null():
  gt = [_gt_row(1, [[10, 16]], saliency=False), _gt_row(2, [[0, 4], [20, 28]], saliency=False)]
  sub = [{'qid': 1, 'pred_relevant_windows': [[10, 16, 1.0]]},
         {'qid': 2, 'pred_relevant_windows': [[0, 4, 1.0], [20, 28, 0.5]]}]
  result = api.evaluate('qvh', sub, gt)
  assert result['middle'] is None and result['long'] is None
  assert result['brief']['MR-middle-mAP'] is None and result['brief']['MR-long-mAP'] is None
  assert result['short']['MR-mAP']['average'] == 100.0
  assert json.loads(json.dumps(result))['long'] is None


def test_empty_saliency_and_argmax_past_the_clips_score_zero_hits():
  gt = [_gt_row(1, [[0, 6]], duration=10), _gt_row(2, [[0, 6]], duration=10), _gt_row(3, [[0, 6]], duration=10)]
  sub = [{'qid': 1, 'pred_relevant_windows': [[0, 6, 1.0]], 'pred_saliency_scores': [9, 1, 0, 0, 0]},
         {'qid': 2, 'pred_relevant_windows': [[0, 6, 1.0]], 'pred_saliency_scores': []},
         {'qid': 3, 'pred_relevant_windows': [[0, 6, 1.0]], 'pred_saliency_scores': [0, 0, 0, 0, 0, 7]}]
  result = api.evaluate('qvh', sub, gt)
  assert result['HL-min-VeryGood']['HL-Hit1'] == 33.33   # only qid 1 hits (clip 0 has a 4)
  assert result['HL-min-Fair']['HL-Hit1'] == 33.33
  assert list(result['brief'])[-6:] == ['HL-min-Fair-mAP', 'HL-min-Fair-Hit1', 'HL-min-Good-mAP', 'HL-min-Good-Hit1',
                                        'HL-min-VeryGood-mAP', 'HL-min-VeryGood-Hit1']


def test_highlight_skipped_without_saliency_in_submission():
  gt = [_gt_row(1, [[0, 6]], duration=10)]
  result = api.evaluate('qvh', [{'qid': 1, 'pred_relevant_windows': [[0, 6, 1.0]]}], gt)
  assert not any(k.startswith('HL') for k in result) and len(result['brief']) == 8
