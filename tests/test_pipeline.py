"""Input pipeline: a hand-built example field by field, determinism, resumability, 8-device sharding.

Uses an in-memory fake store so it does not depend on the planted-feature generator.
"""
import numpy as np
import pytest

from amr_jax.data.records import MomentRecord
from amr_jax.projects import moment_task
from data_pipelines import batches
from data_pipelines.examples import PadSpec, build_example, tef


class DictStore:
  """Minimal in-memory store with the FeatureStore read API."""

  def __init__(self, videos, texts):
    self.videos, self.texts = videos, texts
    self.video_dim = next(iter(videos.values())).shape[1]
    self.text_dim = next(iter(texts.values())).shape[1]

  def video(self, vid):
    return self.videos[vid]

  def text(self, qid):
    return self.texts[qid]


def make_record(qid=7, vid='v1', windows=((2, 8), (14, 20)), scores=((4, 3, 4), (2, 2, 1), (1, 0, 1),
                                                                      (3, 3, 2), (4, 4, 4), (0, 1, 0))):
  clip_ids = tuple(i for st, ed in windows for i in range(st // 2, ed // 2))
  return MomentRecord(qid=qid, vid=vid, query='a query', duration=24.0, windows=tuple(windows),
                      relevant_clip_ids=clip_ids, saliency_scores=tuple(scores))


def test_build_example_by_hand():
  rng = np.random.default_rng(0)
  video = rng.normal(size=(12, 5)).astype(np.float32)
  text = rng.normal(size=(6, 3)).astype(np.float32)
  spec = PadSpec(max_v_l=16, max_q_l=8, max_windows=4, video_dim=5, text_dim=3)
  rec = make_record()
  ex = build_example(rec, video, text, spec, np.random.default_rng(1))
  # Features: TEF appended, zero padding, masks.
  assert ex['src_vid'].shape == (16, 7) and ex['src_txt'].shape == (8, 3)
  np.testing.assert_array_equal(ex['src_vid'][:12, :5], video)
  np.testing.assert_allclose(ex['src_vid'][:12, 5:], np.stack([np.arange(12) / 12, np.arange(1, 13) / 12], 1),
                             rtol=1e-6)
  np.testing.assert_array_equal(ex['src_vid'][12:], 0)
  np.testing.assert_array_equal(ex['src_vid_mask'], [1] * 12 + [0] * 4)
  np.testing.assert_array_equal(ex['src_txt_mask'], [1] * 6 + [0] * 2)
  # Spans: seconds / (L * 2 s) -> (cx, w).
  np.testing.assert_allclose(ex['span_labels_cxw'][:2], [[5 / 24, 6 / 24], [17 / 24, 6 / 24]], rtol=1e-6)
  np.testing.assert_array_equal(ex['span_labels_cxw'][2:], 0)
  assert ex['num_windows'] == 2
  # Mask labels: 1 on clips st//2 .. ed//2 - 1.
  np.testing.assert_array_equal(np.nonzero(ex['mask_labels'][0])[0], [1, 2, 3])
  np.testing.assert_array_equal(np.nonzero(ex['mask_labels'][1])[0], [7, 8, 9])
  np.testing.assert_array_equal(ex['mask_labels'][2:], 0)
  # Saliency: sums per clip, hard pos = max sum (clip 8: 12), hard neg = min sum (clip 9: 1).
  expected_sum = np.zeros(16)
  expected_sum[[1, 2, 3, 7, 8, 9]] = [11, 5, 2, 8, 12, 1]
  np.testing.assert_array_equal(ex['saliency_all_labels'], expected_sum)
  assert ex['saliency_pos_labels'][0] == 8 and ex['saliency_neg_labels'][0] == 9
  assert ex['saliency_pos_labels'][1] in (1, 2, 3, 7, 8, 9)
  assert ex['saliency_neg_labels'][1] in (0, 4, 5, 6, 10, 11)
  np.testing.assert_array_equal(np.nonzero(ex['src_pos_mask'])[0], [1, 2, 3, 7, 8, 9])
  assert ex['src_neg_mask'].sum() == 0
  ex2 = build_example(rec.replace(wrong_spans=((10.0, 14.0),)), video, text, spec, np.random.default_rng(1))
  np.testing.assert_array_equal(np.nonzero(ex2['src_neg_mask'])[0], [5, 6])


def test_tef_matches_reference_formula():
  np.testing.assert_allclose(tef(4), [[0, .25], [.25, .5], [.5, .75], [.75, 1]])


def _split(n=24):
  rng = np.random.default_rng(0)
  records = [make_record(qid=i, vid=f'v{i % 10}') for i in range(n)]
  store = DictStore({f'v{i}': rng.normal(size=(12, 5)).astype(np.float32) for i in range(10)},
                    {i: rng.normal(size=(6, 3)).astype(np.float32) for i in range(n)})
  spec = PadSpec(max_v_l=16, max_q_l=8, max_windows=4, video_dim=5, text_dim=3)
  return batches.Split(records=records, cache=batches.FeatureCache(store, records), spec=spec)


def test_batches_are_deterministic_and_resumable():
  split = _split()
  a = batches.make_train_batch(split, seed=3, step=5, global_batch=8)
  b = batches.make_train_batch(split, seed=3, step=5, global_batch=8)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = batches.make_train_batch(split, seed=4, step=5, global_batch=8)
  assert not np.array_equal(a['qid'], c['qid'])
  # tf.data started at step 5 yields exactly the batch of step 5.
  ds = batches.train_dataset(moment_task.MomentTrainData(split), seed=3, global_batch=8, start_step=5, num_steps=7)
  first = next(ds.as_numpy_iterator())
  for k in a:
    np.testing.assert_array_equal(first[k], a[k])


def test_epochs_cover_every_sample_once():
  split = _split(24)
  seen = np.concatenate([batches.make_train_batch(split, 0, s, 8)['qid'] for s in range(3)])
  assert sorted(seen.tolist()) == list(range(24))


def test_process_slices_partition_the_global_batch():
  split = _split()
  full = batches.make_train_batch(split, 1, 2, 8)
  parts = [batches.make_train_batch(split, 1, 2, 8, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['qid'] for p in parts]), full['qid'])
  np.testing.assert_array_equal(np.concatenate([p['src_vid'] for p in parts]), full['src_vid'])


def test_eight_devices_get_equal_shards():
  import jax
  from amr_jax.train import sharding
  assert jax.device_count() == 8
  mesh = sharding.make_mesh()
  batch = sharding.to_global(batches.make_train_batch(_split(), 0, 0, 16), mesh)
  shards = batch['src_vid'].addressable_shards
  assert len(shards) == 8
  assert {s.data.shape for s in shards} == {(2, 16, 7)}


def test_eval_batches_pad_the_last_batch():
  split = _split(10)
  got = list(batches.eval_batches(split, 4))
  assert len(got) == 3
  assert got[-1]['sample_valid'].tolist() == [1, 1, 0, 0]
  assert sorted(np.concatenate([g['qid'][g['sample_valid'] > 0] for g in got]).tolist()) == list(range(10))
