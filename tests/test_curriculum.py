"""Tests of the easy→hard curriculum: difficulty from SpliceInfo, sampling weights and pacing.

Checks uniform = equal, early steps favour easy samples, the end is uniform, normalisation and purity.
"""
import numpy as np
import pytest

from amr_jax.projects.amr import curriculum
from amr_jax.projects.amr.augment import SegmentPlacement, SpliceInfo

LINEAR = {"pacing": "linear", "start_frac": 0.2, "warm_frac": 0.5, "temperature": 0.05}


def _info(segments, num_clips=75):
  return SpliceInfo(bg_qid=0, bg_vid="v", donor_qid=1, donor_vid="w", aug_index=0, num_clips=num_clips,
                    segments=tuple(SegmentPlacement(flag, (0.0, 2.0 * n), n, m, begin)
                                   for flag, n, m, begin in segments))


def test_difficulty_from_info_orders_by_the_augmentation():
  easy = _info([("true", 30, 30, 0)])
  compressed = _info([("true", 30, 10, 0)])
  with_far_distractor = _info([("true", 30, 30, 0), ("wrong", 5, 5, 60)])
  with_near_distractor = _info([("true", 30, 30, 0), ("wrong", 5, 5, 31)])
  small = _info([("true", 3, 3, 0)])
  values = [curriculum.difficulty_from_info(i) for i in (easy, compressed, with_far_distractor,
                                                           with_near_distractor, small)]
  assert all(0.0 <= v <= 1.0 for v in values)
  assert values[0] < values[1] and values[0] < values[2] < values[3] and values[0] < values[4]
  assert with_near_distractor.min_gap_clips == 1 and with_far_distractor.min_gap_clips == 30
  terms = curriculum.difficulty_terms(with_near_distractor)
  assert terms == pytest.approx({"compression": 0.0, "distractors": 0.5, "nearness": 1.0, "smallness": 0.6})
  assert curriculum.difficulty_from_info(compressed, {"compression": 1.0}) == pytest.approx(2 / 3)
  np.testing.assert_allclose(curriculum.difficulties_from_infos([easy, small]), [values[0], values[4]])
  with pytest.raises(ValueError, match="unknown terms"):
    curriculum.difficulty_from_info(easy, {"size": 1.0})


def test_uniform_gives_equal_weights():
  difficulty = np.random.default_rng(0).uniform(size=50)
  for step in (0, 10, 99):
    weights = curriculum.sampling_weights(difficulty, step, 100, {"pacing": "uniform"})
    np.testing.assert_allclose(weights, np.full(50, 1 / 50))
  np.testing.assert_allclose(curriculum.sampling_weights(difficulty, 0, 100), np.full(50, 1 / 50))  # default


@pytest.mark.parametrize("pacing", ["linear", "sqrt", "step"])
def test_early_steps_favour_easy_samples_and_the_end_is_uniform(pacing):
  difficulty = np.random.default_rng(1).uniform(size=200)
  cfg = dict(LINEAR, pacing=pacing)
  early = curriculum.sampling_weights(difficulty, 0, 1000, cfg)
  middle = curriculum.sampling_weights(difficulty, 300, 1000, cfg)
  final = curriculum.sampling_weights(difficulty, 999, 1000, cfg)
  for weights in (early, middle, final):
    assert weights.shape == (200,) and np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
  mean_difficulty = [float(w @ difficulty) for w in (early, middle, final)]
  assert mean_difficulty[0] < mean_difficulty[1] <= mean_difficulty[2]
  easiest, hardest = np.argmin(difficulty), np.argmax(difficulty)
  assert early[easiest] > 100 * early[hardest]
  # The easiest start_frac of the data shares most of the mass at step 0.
  assert early[difficulty <= np.quantile(difficulty, 0.2)].sum() > 0.6
  np.testing.assert_allclose(final, np.full(200, 1 / 200))


def test_competence_pacing():
  steps = np.arange(0, 1001, 50)
  for pacing in ("linear", "sqrt", "step"):
    values = [curriculum.competence(int(s), 1000, dict(LINEAR, pacing=pacing)) for s in steps]
    assert values[0] == pytest.approx(0.2) and values[-1] == 1.0
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert curriculum.competence(500, 1000, dict(LINEAR, pacing=pacing)) == 1.0  # warm_frac reached
  step_cfg = dict(LINEAR, pacing="step", num_stages=3)
  assert [curriculum.competence(s, 900, step_cfg) for s in (0, 149, 150, 299, 300)] == pytest.approx(
      [0.2, 0.2, 0.6, 0.6, 1.0])
  assert curriculum.competence(100, 1000, {"pacing": "uniform"}) == 1.0
  with pytest.raises(ValueError, match="unknown"):
    curriculum.competence(0, 10, {"pacing": "anti"})


def test_hard_cutoff_and_ties():
  difficulty = np.array([0.1, 0.1, 0.5, 0.9, 0.9])
  weights = curriculum.sampling_weights(difficulty, 0, 100, dict(LINEAR, temperature=0.0, start_frac=0.0))
  np.testing.assert_allclose(weights, [0.5, 0.5, 0, 0, 0])  # the easiest tie group is always allowed
  raw = curriculum.sampling_weights(difficulty, 0, 100, dict(LINEAR, temperature=0.0, start_frac=0.5,
                                                             by_rank=False))
  np.testing.assert_allclose(raw, [1 / 3, 1 / 3, 1 / 3, 0, 0])


def test_sampling_weights_is_pure():
  difficulty = np.random.default_rng(2).uniform(size=30)
  before = difficulty.copy()
  first = curriculum.sampling_weights(difficulty, 17, 100, LINEAR)
  second = curriculum.sampling_weights(difficulty, 17, 100, dict(LINEAR))
  np.testing.assert_array_equal(first, second)
  np.testing.assert_array_equal(difficulty, before)
  with pytest.raises(ValueError):
    curriculum.sampling_weights(np.zeros((2, 2)), 0, 10, LINEAR)


def test_sample_indices():
  weights = np.array([0.7, 0.1, 0.1, 0.1, 0.0])
  first = curriculum.sample_indices(weights, 3, np.random.default_rng(0))
  again = curriculum.sample_indices(weights, 3, np.random.default_rng(0))
  np.testing.assert_array_equal(first, again)
  assert len(set(first.tolist())) == 3 and 4 not in first  # without replacement, zero weight never drawn
  many = curriculum.sample_indices(weights, 2000, np.random.default_rng(1))  # too few positive: with replacement
  counts = np.bincount(many, minlength=5)
  assert counts[4] == 0 and counts[0] > 3 * counts[1]


def test_augmentation_phase():
  phases = [curriculum.augmentation_phase(s, 90) for s in (0, 29, 30, 59, 60, 89)]
  assert phases == [{"compress": False, "use_wrong_spans": False}] * 2 + [
      {"compress": True, "use_wrong_spans": False}] * 2 + [{"compress": True, "use_wrong_spans": True}] * 2
  assert curriculum.augmentation_phase(0, 10, num_phases=1) == {"compress": True, "use_wrong_spans": True}
