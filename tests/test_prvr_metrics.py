"""Tests of the PRVR retrieval metrics: exact to the original validation code, ties, blocked ranks, submission files.

The fixture cases (tests/fixtures/amdnet_reference/eval) are score matrices the original `cal_perf` scored.
"""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.metrics import prvr as pm
from amr_jax.metrics.common import InputError, SubmissionError

EVAL = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'amdnet_reference' / 'eval'
CASES = ('model_case', 'synthetic_small', 'synthetic_large')


@pytest.fixture(scope='module')
def expected():
  return json.loads((EVAL / 'metrics.json').read_text())


def _case(name):
  with np.load(EVAL / f'{name}.npz') as z:
    return {k: z[k] for k in z.files}


@pytest.mark.parametrize('name', CASES)
def test_fixture_metrics_exact(name, expected):
  case = _case(name)
  ranks = pm.gt_ranks(case['scores'], case['gt_video_index'])
  np.testing.assert_array_equal(ranks, case['gt_rank'])
  metrics = pm.recall_metrics(ranks)
  assert metrics == expected[name]['metrics']          # exact float equality, SumR included
  if name == 'model_case':
    assert [metrics[k] for k in ('R1', 'R5', 'R10', 'R100', 'SumR')] == \
        expected[name]['validations_forward_end_to_end']


@pytest.mark.parametrize('name', CASES)
def test_fixture_gt_is_the_cap_id_prefix(name):
  case = _case(name)
  videos = list(case['video_ids'])
  assert [videos.index(pm.video_id(c)) for c in case['cap_ids']] == case['gt_video_index'].tolist()


def test_fixture_tie_counts(expected):
  for name in CASES:
    case = _case(name)
    s, gt = case['scores'], case['gt_video_index']
    s_gt = s[np.arange(len(gt)), gt][:, None]
    tied = ((s == s_gt).sum(1) > 1)
    lower = [(s[i, :gt[i]] == s_gt[i]).any() for i in range(len(gt))]
    assert int(tied.sum()) == expected[name]['ties']['queries_with_gt_score_tied']
    assert int(np.sum(lower)) == expected[name]['ties']['of_which_tied_with_a_lower_video_index']
  # With ties, 'optimistic' <= 'stable' <= 'pessimistic', and they differ on the tied small case.
  case = _case('synthetic_small')
  ranks = {t: pm.gt_ranks(case['scores'], case['gt_video_index'], t) for t in pm.TIE_ORDERS}
  assert (ranks['optimistic'] <= ranks['stable']).all() and (ranks['stable'] <= ranks['pessimistic']).all()
  assert (ranks['optimistic'] < ranks['pessimistic']).any()


def _brute_force(scores, gt, tie_order):
  """Ranks by sorting: a stable descending sort (the original), or counting for the two other orders."""
  out = []
  for i, row in enumerate(scores):
    if tie_order == 'stable':
      order = np.argsort(-row, kind='stable')            # NaN sorts last, as torch.argsort does
      out.append(int(np.flatnonzero(order == gt[i])[0]) + 1)
      continue
    g = row[gt[i]]
    others = np.delete(row, gt[i])
    if np.isnan(g):
      ahead = np.count_nonzero(~np.isnan(others)) if tie_order == 'optimistic' else len(others)
    else:
      ahead = np.count_nonzero(others > g) + (np.count_nonzero(others == g) if tie_order == 'pessimistic' else 0)
    out.append(ahead + 1)
  return np.asarray(out)


@pytest.mark.parametrize('seed', range(4))
def test_ranks_match_brute_force_with_ties_and_nan(seed):
  rng = np.random.default_rng(seed)
  nq, nv = 50, int(rng.integers(2, 140))
  scores = (rng.integers(-3, 4, size=(nq, nv)) / 2).astype(np.float32)   # few distinct values: many ties
  scores[rng.random((nq, nv)) < 0.03] = np.nan
  scores[0, :] = 1.0                                                      # a fully tied row
  gt = rng.integers(0, nv, nq)
  for tie_order in pm.TIE_ORDERS:
    np.testing.assert_array_equal(pm.gt_ranks(scores, gt, tie_order), _brute_force(scores, gt, tie_order))
    # A device matrix is ranked on device: the same counts, ties and NaN included.
    np.testing.assert_array_equal(pm.gt_ranks(jnp.asarray(scores), gt, tie_order),
                                  _brute_force(scores, gt, tie_order))


def test_device_scores_through_ranks_from_scores():
  """The port's own predictions as a device array: ranked on device, NaN rows still named."""
  case = _case('model_case')
  caps = [f'v{j:02d}#{i}' for i, j in enumerate(case['gt_video_index'])]
  vids = [f'v{j:02d}' for j in range(case['scores'].shape[1])]
  scores = case['scores'].astype(np.float32)
  on_host = pm.ranks_from_scores(scores, caps, vids, caps, vids)
  np.testing.assert_array_equal(pm.ranks_from_scores(jnp.asarray(scores), caps, vids, caps, vids), on_host)
  np.testing.assert_array_equal(on_host, pm.gt_ranks(scores.astype(np.float64), case['gt_video_index']))
  scores[3, 1] = np.nan
  with pytest.raises(SubmissionError, match=f'cap_id={caps[3]}: field=scores: NaN'):
    pm.ranks_from_scores(jnp.asarray(scores), caps, vids, caps, vids)


def test_recall_metrics_operation_order_and_misses():
  assert pm.recall_metrics([1, 2, 6, 11, 101]) == {
      'R1': 100.0 * 1 / 5, 'R5': 100.0 * 2 / 5, 'R10': 100.0 * 3 / 5, 'R100': 100.0 * 4 / 5,
      'SumR': 0 + (((20.0 + 40.0) + 60.0) + 80.0)}
  assert pm.recall_metrics([np.inf, 1])['R100'] == 50.0
  assert pm.chance_metrics(200)['R100'] == 50.0
  with pytest.raises(ValueError, match='tie_order'):
    pm.gt_ranks(np.zeros((1, 2)), [0], 'random')


# --- blocked ranks on device --------------------------------------------------------------------------------


def _dot_max(captions, videos):
  """Exact in float32 for small integer inputs: [Bq, d] x [Bv, N, d] -> max over clips [Bq, Bv]."""
  return jnp.einsum('qd,vnd->qvn', captions, videos).max(axis=-1)


@pytest.mark.parametrize('mode', ['rows', 'running'])
def test_blocked_equals_unblocked_with_ties(mode):
  rng = np.random.default_rng(0)
  nq, nv, clips, d = 37, 53, 4, 6
  captions = rng.integers(-2, 3, size=(nq, d)).astype(np.float32)
  videos = rng.integers(-2, 3, size=(nv, clips, d)).astype(np.float32)
  videos[7] = videos[3]                                      # duplicated videos: exactly tied columns
  videos[40] = videos[3]
  gt = rng.integers(0, nv, nq)
  gt[:5] = [3, 7, 40, 3, 7]
  full = np.einsum('qd,vnd->qvn', captions, videos).max(-1)
  assert (full[np.arange(nq), gt][:, None] == full).sum(1).max() > 2   # ties are present
  for tie_order in pm.TIE_ORDERS:
    expected = pm.gt_ranks(full, gt, tie_order)
    for cb, vb in ((8, 16), (37, 53), (5, 7), (64, 100)):
      got = pm.blocked_gt_ranks(_dot_max, captions, videos, gt, caption_block=cb, video_block=vb,
                                tie_order=tie_order, mode=mode)
      np.testing.assert_array_equal(got, expected, err_msg=f'{tie_order} {cb}x{vb}')
  np.testing.assert_array_equal(pm.blocked_scores(_dot_max, captions, videos, caption_block=8, video_block=16), full)


def test_blocked_cosine_pytrees_and_fixture_scores():
  rng = np.random.default_rng(1)
  captions = {'emb': rng.standard_normal((20, 8)).astype(np.float32)}
  videos = {'tokens': rng.standard_normal((30, 5, 8)).astype(np.float32)}
  fn = lambda c, v: pm.max_cosine_score(c['emb'], v['tokens'])   # noqa: E731
  gt = rng.integers(0, 30, 20)
  scores = pm.blocked_scores(fn, captions, videos, caption_block=6, video_block=7)
  ranks = pm.blocked_gt_ranks(fn, captions, videos, gt, caption_block=6, video_block=7)
  np.testing.assert_array_equal(ranks, pm.gt_ranks(scores, gt))
  np.testing.assert_allclose(scores, np.einsum(
      'qd,vnd->qvn', captions['emb'] / np.linalg.norm(captions['emb'], axis=-1, keepdims=True),
      videos['tokens'] / np.linalg.norm(videos['tokens'], axis=-1, keepdims=True)).max(-1), atol=1e-6)
  # The fixture's tied model scores, fed through the blocked path as a precomputed [Nq, Nv] lookup.
  case = _case('model_case')
  table = jnp.asarray(case['scores'])
  lookup = lambda q, v: table[q][:, v]                              # noqa: E731
  got = pm.blocked_gt_ranks(lookup, np.arange(30), np.arange(12), case['gt_video_index'], caption_block=8,
                            video_block=5)
  np.testing.assert_array_equal(got, case['gt_rank'])


# --- submission files ---------------------------------------------------------------------------------------


@pytest.fixture
def model_case_files(tmp_path):
  case = _case('model_case')
  captions = tmp_path / 'evaltest.caption.txt'
  captions.write_text(''.join(f'{c} a caption of {pm.video_id(c)}\n' for c in case['cap_ids']))
  return case, captions


def test_caption_file_gt_order(model_case_files):
  case, captions = model_case_files
  cap_ids, videos = pm.read_caption_gt(captions)
  assert cap_ids == case['cap_ids'].tolist() and videos == case['video_ids'].tolist()


def test_score_file_any_row_and_column_order(model_case_files, tmp_path, expected):
  case, captions = model_case_files
  rng = np.random.default_rng(0)
  rows, cols = rng.permutation(30), rng.permutation(12)
  path = tmp_path / 'scores.npz'
  pm.write_score_file(path, case['scores'][rows][:, cols], case['cap_ids'][rows], case['video_ids'][cols])
  result = pm.evaluate_file(path, captions)
  assert {k: result[k] for k in ('R1', 'R5', 'R10', 'R100', 'SumR')} == expected['model_case']['metrics']
  assert (result['num_captions'], result['num_videos']) == (30, 12)


def test_ranking_file(model_case_files, tmp_path, expected):
  case, captions = model_case_files
  path = tmp_path / 'ranking.jsonl'
  pm.write_ranking_file(path, case['scores'], case['cap_ids'].tolist(), case['video_ids'].tolist())
  result = pm.evaluate_file(path, captions)
  assert {k: result[k] for k in ('R1', 'R5', 'R10', 'R100', 'SumR')} == expected['model_case']['metrics']


def test_score_file_problems_are_one_line_each(model_case_files, tmp_path):
  case, captions = model_case_files
  caps, vids, scores = case['cap_ids'].tolist(), case['video_ids'].tolist(), case['scores'].copy()
  scores[2, 3] = np.nan
  path = tmp_path / 'bad.npz'
  pm.write_score_file(path, scores[1:], caps[1:], vids[:-1] + ['zzz'])
  with pytest.raises(SubmissionError) as err:
    pm.evaluate_file(path, captions)
  problems = err.value.problems
  assert f'bad.npz: cap_id={caps[0]}: missing (in evaltest.caption.txt but not in the score file)' in problems
  assert 'bad.npz: vid=zzz: unknown video (not in evaltest.caption.txt)' in problems
  assert f'bad.npz: vid={vids[-1]}: missing (a video of evaltest.caption.txt not in the score file)' in problems
  assert all('\n' not in p for p in problems)
  pm.write_score_file(path, scores, caps, vids)
  with pytest.raises(SubmissionError, match=f'cap_id={caps[2]}: field=scores: NaN'):
    pm.evaluate_file(path, captions)
  np.savez(tmp_path / 'shape.npz', scores=scores[:, :5], cap_ids=np.asarray(caps), vid_ids=np.asarray(vids))
  with pytest.raises(SubmissionError, match='field=scores: shape'):
    pm.evaluate_file(tmp_path / 'shape.npz', captions)
  with pytest.raises(InputError, match='no such score file'):
    pm.evaluate_file(tmp_path / 'absent.npz', captions)
  with pytest.raises(InputError, match='unknown prediction format'):
    pm.evaluate_file(tmp_path / 'x.csv', captions)


def test_ranking_file_problems(model_case_files, tmp_path):
  case, captions = model_case_files
  caps, vids = case['cap_ids'].tolist(), case['video_ids'].tolist()
  rows = [{'cap_id': c, 'ranked_vids': vids} for c in caps[2:]]
  rows[0]['ranked_vids'] = vids[:5]                       # too short (12 videos needed: min(100, Nv))
  rows[1]['ranked_vids'] = vids + ['nope']
  rows.append({'cap_id': caps[4], 'ranked_vids': vids})   # duplicate
  rows.append({'cap_id': 'ghost#1', 'ranked_vids': vids})
  path = tmp_path / 'rank.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  with pytest.raises(SubmissionError) as err:
    pm.evaluate_file(path, captions)
  text = '\n'.join(err.value.problems)
  assert f'rank.jsonl:1: cap_id={caps[2]}: field=ranked_vids: 5 videos; at least 12 needed' in text
  assert f'rank.jsonl:2: cap_id={caps[3]}: field=ranked_vids: 1 unknown video(s) (first: nope)' in text
  assert f'rank.jsonl:29: cap_id={caps[4]}: duplicate cap_id (first at line 3)' in text
  assert 'rank.jsonl:30: cap_id=ghost#1: unknown caption' in text
  assert f'cap_id={caps[0]}: missing (in evaltest.caption.txt but not in the ranking file)' in text
