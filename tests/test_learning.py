"""The whole recipe learns: stage 1 -> stage 2 on planted features beat a shuffled-query control by far.

Also the sliding-window Predictor on a video 3x longer than max_v_l, with the trained stage-1 model.
"""
import numpy as np
import pytest

from amr_jax.data import annotations, features, planted
from amr_jax.data.records import MomentRecord
from amr_jax.workflows import learning_check

NUM_TRAIN, NUM_VAL = 1000, 200
STAGE1_STEPS, STAGE2_STEPS, BATCH = 400, 150, 32


@pytest.fixture(scope='module')
def learned(tmp_path_factory):
  """Both arms (real queries, shuffled control), stage 1 then stage 2: `launch/learning_check.py` at small size."""
  root = tmp_path_factory.mktemp('learn')
  result = learning_check.run(root, NUM_TRAIN, NUM_VAL, STAGE1_STEPS, STAGE2_STEPS, BATCH, num_devices=1)
  print(learning_check.table(result))
  return root, result


@pytest.fixture(scope='module')
def runs(learned):
  result = learned[1]
  return {arm: (result[arm]['stage1'], result[arm]['stage2']) for arm in ('real', 'control')}


@pytest.fixture(scope='module')
def planted_small(learned):
  return learned[0]


def test_real_queries_beat_the_shuffled_query_control(runs):
  for stage in (0, 1):
    real, control = runs['real'][stage], runs['control'][stage]
    assert real['MR-full-R1@0.5'] >= control['MR-full-R1@0.5'] + 10, (stage, real, control)
    assert real['HL-min-VeryGood-mAP'] >= control['HL-min-VeryGood-mAP'] + 8, (stage, real, control)
  # The control stays near chance, i.e. below what a perfect query-blind span finder gets by guessing among the
  # planted look-alike spans (test_control_is_below_the_query_blind_ceiling, docs/PLANTED.md). Where it lands
  # under that ceiling depends on the CPU's float32 rounding: stage-2 control R1@0.5 was < 15 on AVX-512
  # machines and 20.5 on an AVX2 one (AMD EPYC, 2026-12-03; real 45.5 there), so no tighter bound is asserted.


def test_control_is_below_the_query_blind_ceiling(learned):
  result = learned[1]
  assert 30 < result['query_blind_r1']['uniform'] <= result['query_blind_r1']['longest'] < 50, result
  for stage in ('stage1', 'stage2'):
    assert result['control'][stage]['MR-full-R1@0.5'] < result['query_blind_r1']['uniform'], result


def test_stage2_improves_on_stage1(runs):
  stage1, stage2 = runs['real']
  assert stage2['MR-full-mAP'] > stage1['MR-full-mAP'], (stage1, stage2)
  assert stage2['MR-full-R1@0.5'] > stage1['MR-full-R1@0.5'], (stage1, stage2)


def test_sliding_window_finds_a_moment_in_the_last_third(runs, planted_small, tmp_path):
  """A 450 s video (225 clips = 3 x max_v_l): the planted moment at 380-400 s is found, windows stay in range."""
  from amr_jax.train.predictor import Predictor
  del runs
  val = annotations.load_annotations(planted_small / 'val.jsonl')
  found = 0
  probes = val[:10]
  records = [MomentRecord(qid=900000 + i, vid=f'long_{i}', query=r.query, duration=450.0,
                          windows=((380.0, 400.0),), relevant_clip_ids=tuple(range(190, 200)),
                          saliency_scores=tuple((4, 4, 4) for _ in range(10)))
             for i, r in enumerate(probes)]
  planted.write_planted_store(records, str(tmp_path / 'long'), seed=0, dims='tiny', max_v_l=225)
  store = features.FeatureStore(str(tmp_path / 'long'), max_v_l=225)
  predictor = Predictor(planted_small / 'real_s1', which='last')
  rows = predictor.predict_data(predictor.task.eval_data_from_records(records, store, with_labels=False))
  for row in rows:
    windows = np.array([w[:2] for w in row['pred_relevant_windows']])
    assert len(windows) and windows.min() >= 0 and windows.max() <= 450
    assert len(row['pred_saliency_scores']) == 225
    top = windows[:3]
    found += bool(np.any((top[:, 0] < 400) & (top[:, 1] > 380)))
  assert found >= 6, f'only {found}/10 long videos had a top-3 window on the planted moment'
