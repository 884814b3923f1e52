"""Tests of the PRVR data layer: caption files, hdf5 / BigFile stores, validation, batches, the planted store.

Counts come from the shipped Charades-STA / QVH annotations; the planted store is probed with its own decoders.
"""
import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

from amr_jax.data import planted_prvr as pp
from amr_jax.data import prvr
from amr_jax.metrics import prvr as pm
from data_pipelines import prvr_batches as pb

REPO = pathlib.Path(__file__).resolve().parents[1]
ANNOTATIONS = REPO / 'data' / 'annotations'
EVAL = REPO / 'tests' / 'fixtures' / 'amdnet_reference' / 'eval'


# --- collections from the shipped annotations ---------------------------------------------------------------


def test_charades_sta_prvr_counts():
  train = prvr.charades_sta_collection('train', ANNOTATIONS / 'charades-sta')
  test = prvr.charades_sta_collection('test', ANNOTATIONS / 'charades-sta')
  # MS-SL's split: 12,408 / 3,720 captions; 1,334 test videos. Its readme says 5,538 train videos; the shipped
  # file names 5,338 (5,338 + 1,334 = 6,672, and the readme's own total is 6,670).
  assert (len(train), train.num_videos) == (12408, 5338)
  assert (len(test), test.num_videos) == (3720, 1334)
  assert not set(train.video_ids) & set(test.video_ids)
  assert (train.max_captions_per_video(), test.max_captions_per_video()) == (10, 12)
  first = train.captions[0]
  assert (first.cap_id, first.text, first.windows) == ('AO8RW#0', 'a person is putting a book on a shelf.',
                                                       ((0.0, 6.9),))
  assert first.duration == 33.67                        # from the lighthouse jsonl
  assert sum(d is None for d in train.durations().values()) == 2   # 2 videos are not in the jsonl
  assert train.caption_video[0] == 0 and train.video_ids[0] == 'AO8RW'


def test_qvh_prvr_counts():
  counts = {s: prvr.qvh_collection(s, ANNOTATIONS / 'qvhighlights') for s in ('train', 'val', 'test')}
  assert {s: (len(c), c.num_videos) for s, c in counts.items()} == {
      'train': (7218, 7100), 'val': (1550, 1519), 'test': (1542, 1529)}
  caption = counts['val'].captions[0]
  assert caption.cap_id.startswith(caption.vid + '#') and caption.windows and caption.duration == 150


def test_caption_file_round_trip(tmp_path):
  test = prvr.charades_sta_collection('test', ANNOTATIONS / 'charades-sta')
  path = prvr.caption_file_path(tmp_path, 'charades', 'test')
  prvr.write_caption_file(test, path)
  assert path.endswith(os.path.join('charades', 'TextData', 'charadestest.caption.txt'))
  back = prvr.load_collection(tmp_path, 'charades', 'test')
  assert (len(back), back.num_videos, back.problems) == (3720, 1334, [])
  assert back.cap_ids == test.cap_ids and back.video_ids == test.video_ids
  assert [c.text for c in back.captions] == [' '.join(c.text.split()) for c in test.captions]
  np.testing.assert_array_equal(back.caption_video, test.caption_video)


def test_video_order_is_first_appearance_as_in_the_fixture(tmp_path):
  with np.load(EVAL / 'model_case.npz') as z:
    cap_ids, video_ids = z['cap_ids'].tolist(), z['video_ids'].tolist()
  path = tmp_path / 'evaltest.caption.txt'
  path.write_text(''.join(f'{c} caption {i}\n' for i, c in enumerate(cap_ids)))
  coll = prvr.read_caption_file(path)
  assert coll.video_ids == video_ids and coll.cap_ids == cap_ids


# --- stores --------------------------------------------------------------------------------------------------


def _toy(tmp_path, n_videos=5, dv=6, dq=4, tokens=False):
  rng = np.random.default_rng(0)
  caps = [prvr.Caption(f'v{v}#{k}', f'caption {v} {k}') for v in range(n_videos) for k in range(v % 3 + 1)]
  coll = prvr.PrvrCollection(caps, name='toy', split='test')
  videos = {vid: rng.standard_normal((3 + i, dv)).astype(np.float32) for i, vid in enumerate(coll.video_ids)}
  texts = {c.cap_id: rng.standard_normal((2 + len(c.cap_id) % 3, dq) if tokens else dq).astype(np.float32)
           for c in caps}
  return coll, videos, texts


def test_hdf5_and_bigfile_round_trip(tmp_path):
  coll, videos, texts = _toy(tmp_path)
  base = tmp_path / 'toy'
  prvr.write_caption_file(coll, prvr.caption_file_path(tmp_path, 'toy', 'test'))
  prvr.write_hdf5(base / 'FeatureData' / prvr.AMDNET_VIDEO_FILE.format(collection='toy'), videos)
  prvr.write_hdf5(base / 'TextData' / prvr.AMDNET_TEXT_FILE.format(collection='toy'), texts)
  prvr.write_bigfile(base / 'FeatureData' / 'i3d_rgb_lgi', videos)
  loaded = prvr.load_collection(tmp_path, 'toy', 'test')
  assert (len(loaded), loaded.num_videos) == (9, 5)
  h5 = prvr.PrvrStore.open(tmp_path, 'toy')                         # the AMDNet hdf5 wins
  big = prvr.PrvrStore.open(tmp_path, 'toy', visual_feature='i3d_rgb_lgi')
  assert isinstance(h5.video_source, prvr.Hdf5Features) and isinstance(big.video_source, prvr.BigFileFeatures)
  for vid, frames in videos.items():
    np.testing.assert_array_equal(h5.video(vid), frames)
    np.testing.assert_array_equal(big.video(vid), frames)
    assert h5.num_frames(vid) == big.num_frames(vid) == len(frames)
  for cap_id, vector in texts.items():
    np.testing.assert_array_equal(h5.text(cap_id), vector)
  assert prvr.validate(loaded, h5) == [] and prvr.validate(loaded, big) == []
  shape = (base / 'FeatureData' / 'i3d_rgb_lgi' / 'shape.txt').read_text()
  assert shape == f'{sum(len(v) for v in videos.values())} 6'
  # Without the hdf5 the only BigFile directory is found; a BigFile without video2frames reads one row per id.
  os.remove(base / 'FeatureData' / prvr.AMDNET_VIDEO_FILE.format(collection='toy'))
  assert isinstance(prvr.PrvrStore.open(tmp_path, 'toy').video_source, prvr.BigFileFeatures)
  os.remove(base / 'FeatureData' / 'i3d_rgb_lgi' / 'video2frames.txt')
  single = prvr.BigFileFeatures(base / 'FeatureData' / 'i3d_rgb_lgi')
  assert single.read('v1_2').shape == (1, 6) and not single.has('v1')


def test_token_features_round_trip(tmp_path):
  coll, videos, texts = _toy(tmp_path, tokens=True)
  prvr.write_hdf5(tmp_path / 'v.hdf5', videos)
  prvr.write_hdf5(tmp_path / 't.hdf5', texts)
  store = prvr.PrvrStore(tmp_path / 'v.hdf5', tmp_path / 't.hdf5')
  assert prvr.validate(coll, store) == []
  split = pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(text_kind='tokens', max_desc_l=3))
  batch = pb.make_train_batch(split, 0, 0, 4)
  assert batch['caption_feat'].shape == (4, 3, 3, 4) and batch['caption_token_mask'].shape == (4, 3, 3)
  with pytest.raises(prvr.PrvrDataError, match="does not fit text_kind='sentence'"):
    pb.PrvrSplit(coll, store, pb.PrvrBatchConfig())


# --- validation ---------------------------------------------------------------------------------------------


def test_validation_names_every_injected_fault(tmp_path):
  coll, videos, texts = _toy(tmp_path, n_videos=8)
  cap_file = tmp_path / 'toytest.caption.txt'
  prvr.write_caption_file(coll, cap_file)
  with open(cap_file, 'a', encoding='utf-8') as f:
    f.write('v0#0 a repeated id\n')       # line 16
    f.write('v7#9\n')                    # line 17: no caption
    f.write('garbage\n')                 # line 18
    f.write('#5 no video\n')             # line 19
    f.write('\n')                        # blank: skipped
  videos['v1'][1, 2] = np.nan
  videos['v2'] = videos['v2'][:, :5]                       # wrong width
  videos['v3'] = np.zeros((0, 6), np.float32)              # no frames
  del videos['v4']                                         # missing
  texts['v5#0'] = texts['v5#0'][:3]                        # wrong width
  texts['v6#0'][0] = np.inf
  del texts['v7#0']
  prvr.write_hdf5(tmp_path / 'video.hdf5', videos)
  prvr.write_hdf5(tmp_path / 'text.hdf5', texts)
  coll = prvr.read_caption_file(cap_file)
  store = prvr.PrvrStore(tmp_path / 'video.hdf5', tmp_path / 'text.hdf5')
  problems = prvr.validate(coll, store)
  lines = [str(p) for p in problems]
  assert all('\n' not in line for line in lines)
  v, t, c = tmp_path / 'video.hdf5', tmp_path / 'text.hdf5', cap_file
  expected = [
      f'{c}:16: vid=v0 cap_id=v0#0 field=cap_id: duplicate cap_id (first at line 1)',
      f'{c}:17: vid=v7 cap_id=v7#9 field=caption: empty caption (the line holds only a cap_id)',
      f"{c}:18: field=line: unparsable line 'garbage': expected 'cap_id caption'",
      f"{c}:19: cap_id=#5 field=cap_id: empty video id in cap_id '#5' (it starts with '#')",
      f'{v}: vid=v1 field=video: 1 NaN/Inf value(s)',
      f"{v}: vid=v2 field=video: width 5 differs from the store's (most common) 6",
      f'{v}: vid=v3 field=video: empty array, shape (0, 6)',
      f'{v}: vid=v4 field=video: missing from the feature file',
      f"{t}: vid=v5 cap_id=v5#0 field=text: width 3 differs from the store's (most common) 4",
      f'{t}: vid=v6 cap_id=v6#0 field=text: 1 NaN/Inf value(s)',
      f'{t}: vid=v7 cap_id=v7#0 field=text: missing from the feature file']
  assert lines == expected
  kept, dropped = prvr.drop_bad(coll, problems)
  assert {d.cap_id for d in dropped} == {'v1#0', 'v1#1', 'v2#0', 'v2#1', 'v2#2', 'v3#0', 'v4#0', 'v4#1',
                                         'v5#0', 'v6#0', 'v7#0'}
  assert kept.video_ids == ['v0', 'v5', 'v7'] and prvr.validate(kept, store) == []
  assert prvr.summarize(coll, problems).startswith('11 problem(s)')
  # With the model's widths the check is against them.
  assert any('differs from the model 7' in str(p) for p in prvr.validate(kept, store, video_dim=7))


def test_validation_whole_file_problems(tmp_path):
  empty = tmp_path / 'empty.caption.txt'
  empty.write_text('\n\n')
  assert [str(p) for p in prvr.read_caption_file(empty).problems] == [
      f'{empty}: field=file: empty caption file (no captions)']
  missing = prvr.read_caption_file(tmp_path / 'nope.txt')
  assert str(missing.problems[0]) == f'{tmp_path / "nope.txt"}: field=file: no such caption file'
  assert prvr.drop_bad(missing, missing.problems)[0].num_videos == 0
  coll, videos, texts = _toy(tmp_path)
  prvr.write_hdf5(tmp_path / 't.hdf5', texts)
  problems = prvr.validate(coll, prvr.PrvrStore(tmp_path / 'absent.hdf5', tmp_path / 't.hdf5'))
  assert [str(p) for p in problems] == [f'{tmp_path / "absent.hdf5"}: field=video: no such feature file (needed '
                                        'by 5 videos)']
  kept, dropped = prvr.drop_bad(coll, problems)
  assert len(kept) == 0 and len(dropped) == len(coll)
  # An hdf5 that is not one, and a BigFile whose feature.bin does not match shape.txt: one store problem each.
  (tmp_path / 'junk.hdf5').write_text('not hdf5')
  problems = prvr.validate(coll, prvr.PrvrStore(tmp_path / 't.hdf5', tmp_path / 'junk.hdf5'))
  assert [(p.field, p.scope) for p in problems] == [('text', prvr.SCOPE_STORE)]   # per-key checks stop there
  problems = prvr.validate(coll, prvr.PrvrStore(tmp_path / 'junk.hdf5', tmp_path / 't.hdf5'))
  assert len(problems) == 1 and problems[0].scope == prvr.SCOPE_STORE
  assert str(problems[0]).startswith(f'{tmp_path / "junk.hdf5"}: field=video: not a readable hdf5 file')
  prvr.write_bigfile(tmp_path / 'bf', videos)
  with open(tmp_path / 'bf' / 'feature.bin', 'ab') as f:
    f.write(b'\0\0\0\0')
  problems = prvr.validate(coll, prvr.PrvrStore(tmp_path / 'bf', tmp_path / 't.hdf5'))
  assert len(problems) == 1 and 'feature.bin: field=video: ' in str(problems[0]) and 'bytes, expected' in str(
      problems[0])
  # A frame id of video2frames that the BigFile lacks names the video.
  prvr.write_bigfile(tmp_path / 'bf2', videos)
  v2f = prvr.read_video2frames(tmp_path / 'bf2' / 'video2frames.txt')
  v2f['v2'].append('v2_99')
  (tmp_path / 'bf2' / 'video2frames.txt').write_text(repr(v2f))
  problems = prvr.validate(coll, prvr.PrvrStore(tmp_path / 'bf2', tmp_path / 't.hdf5'))
  assert [str(p) for p in problems] == [f'{tmp_path / "bf2" / "id.txt"}: vid=v2 field=video: 1 of 6 frame ids '
                                        'not in the BigFile (first: v2_99)']


# --- batches ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def toy_split(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('toy_split')
  coll, videos, texts = _toy(tmp, n_videos=11)
  prvr.write_hdf5(tmp / 'v.hdf5', videos)
  prvr.write_hdf5(tmp / 't.hdf5', texts)
  store = prvr.PrvrStore(tmp / 'v.hdf5', tmp / 't.hdf5')
  return coll, store, videos, texts


def test_train_batches_all_captions_padded_and_deterministic(toy_split):
  coll, store, videos, texts = toy_split
  split = pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_ctx_l=8))
  data = pb.PrvrTrainData(split)
  assert (split.num_caption_slots, split.num_frame_slots) == (3, 13)
  assert data.steps_per_epoch(4) == 3
  seen = []
  for step in range(3):
    batch = data.batch(5, step, 4)
    assert {k: v.shape for k, v in batch.items()} == {
        'video_feat': (4, 13, 6), 'video_mask': (4, 13), 'caption_feat': (4, 3, 4), 'caption_mask': (4, 3),
        'sample_valid': (4,)}
    ids = data.batch_video_ids(5, step, 4)
    for row, vid in enumerate(ids):
      if vid is None:
        assert batch['sample_valid'][row] == 0 and batch['caption_mask'][row].sum() == 0
        continue
      v = coll.video_index[vid]
      frames = videos[vid]
      np.testing.assert_array_equal(batch['video_feat'][row, :len(frames)], frames)
      assert batch['video_mask'][row].sum() == len(frames) and not batch['video_feat'][row, len(frames):].any()
      caps = coll.video_captions[v]
      assert batch['caption_mask'][row].tolist() == [1.0] * len(caps) + [0.0] * (3 - len(caps))
      for slot, k in enumerate(caps):
        np.testing.assert_array_equal(batch['caption_feat'][row, slot], texts[coll.captions[k].cap_id])
    real = [x for x in ids if x is not None]
    lengths = [min(len(videos[x]), 8) for x in real]
    assert lengths == sorted(lengths, reverse=True)             # quirk: sorted by frame-branch length
    seen += real
  assert sorted(seen) == sorted(coll.video_ids)                 # one epoch = every video once (last one padded)
  again = data.batch(5, 1, 4)
  assert all(np.array_equal(again[k], data.batch(5, 1, 4)[k]) for k in again)
  assert not np.array_equal(data.batch(5, 0, 4)['video_feat'], data.batch(6, 0, 4)['video_feat'])
  # Two processes: their slices are the global batch.
  halves = [data.batch(5, 4, 4, p, 2) for p in range(2)]
  whole = data.batch(5, 4, 4)
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
  drop = pb.PrvrTrainData(pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(last_batch='drop')))
  assert drop.steps_per_epoch(4) == 2 and drop.batch(0, 1, 4)['sample_valid'].all()


def test_sort_matches_the_fixture_collate():
  # tiny_config.json BATCH: vidA..vidD with 7/19/12/30 frames, fetched in sampler order [2, 0, 3, 1]; with
  # max_ctx_l 24 the repo's collate gives [vidD, vidB, vidC, vidA] (inputs.npz video_ids).
  class _Split:
    config = pb.PrvrBatchConfig(max_ctx_l=24)

    def frame_branch_length(self, v):
      return min([7, 19, 12, 30][v], 24)
  order = pb.order_rows(_Split(), np.array([2, 0, 3, 1]), np.ones(4, bool))
  assert [['vidA', 'vidB', 'vidC', 'vidD'][i] for i in order] == ['vidD', 'vidB', 'vidC', 'vidA']


def test_caption_and_frame_overflow(toy_split):
  coll, store, _, _ = toy_split
  with pytest.raises(prvr.PrvrDataError) as err:
    pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_captions_per_video=2))
  assert 'vid=v2 field=caption: 3 captions > max_captions_per_video=2' in str(err.value).split('\n')[0]
  truncate = pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_captions_per_video=2, caption_overflow='truncate'))
  assert truncate.captions_of(2, None) == coll.video_captions[2][:2]
  sample = pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_captions_per_video=2, caption_overflow='sample'))
  picks = {tuple(sample.captions_of(2, np.random.default_rng(s))) for s in range(20)}
  assert len(picks) == 3 and all(len(p) == 2 for p in picks)
  with pytest.raises(prvr.PrvrDataError, match='vid=v10 field=video: 13 frames > max_frames=12'):
    pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_frames=12))
  sampled = pb.PrvrSplit(coll, store, pb.PrvrBatchConfig(max_frames=4, frame_overflow='sample'))
  assert sampled.num_frame_slots == 4 and max(len(x) for x in sampled.frames) == 4


def test_eval_blocks_cover_everything_once(toy_split):
  coll, store, videos, texts = toy_split
  data = pb.PrvrEvalData(pb.PrvrSplit(coll, store, pb.PrvrBatchConfig()))
  blocks = list(data.video_blocks(4))
  assert len(blocks) == 3 and blocks[-1]['sample_valid'].tolist() == [1, 1, 1, 0]
  index = np.concatenate([b['video_index'][b['sample_valid'] > 0] for b in blocks])
  assert index.tolist() == list(range(11))
  caps = list(data.batches(7))
  gt = np.concatenate([b['gt_video_index'][b['sample_valid'] > 0] for b in caps])
  np.testing.assert_array_equal(gt, coll.caption_video)
  feats = np.concatenate([b['caption_feat'][b['sample_valid'] > 0] for b in caps])
  np.testing.assert_array_equal(feats, np.stack([texts[c] for c in coll.cap_ids]))
  halves = [list(data.batches(8, p, 2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([halves[0][0]['caption_index'], halves[1][0]['caption_index']]),
                                np.arange(8))


# --- planted store ------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  root = tmp_path_factory.mktemp('planted_prvr')
  collections = pp.dataset_collections('charades', str(ANNOTATIONS), limit=300)
  summary = pp.write_planted_prvr(collections, root, 'charades', seed=3, dims='tiny')
  return root, collections, summary


def _arrays(store, coll):
  return ([store.video(v) for v in coll.video_ids], [store.text(c) for c in coll.cap_ids])


def test_planted_store_layout_and_determinism(planted, tmp_path):
  root, collections, summary = planted
  assert summary.num_captions == {'train': 300, 'val': 300, 'test': 300}
  assert summary.num_true_spans == 600 and summary.num_distractor_spans == 2 * 600
  meta = json.loads((root / 'charades' / pp.META_FILE).read_text())
  assert (meta['dims'], meta['video_dim'], meta['text_dim'], meta['seed']) == ('tiny', 32, 32, 3)
  assert (root / 'charades' / 'FeatureData' / 'i3d_rgb_lgi' / 'video2frames.txt').is_file()
  test = prvr.load_collection(root, 'charades', 'test')
  store = prvr.PrvrStore.open(root, 'charades')
  assert prvr.validate(test, store, video_dim=32, text_dim=32) == []
  assert test.cap_ids == collections['test'].cap_ids
  # Same seed: same arrays and files; another seed: other arrays; text vectors depend on the cap_id alone.
  small = {s: c.subset(range(40)) for s, c in collections.items()}
  pp.write_planted_prvr(small, tmp_path / 'a', 'charades', seed=3)
  pp.write_planted_prvr(small, tmp_path / 'b', 'charades', seed=3)
  pp.write_planted_prvr(small, tmp_path / 'c', 'charades', seed=4, video_layout='bigfile')
  digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()   # noqa: E731
  files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
  assert all(digest(tmp_path / 'a' / f) == digest(tmp_path / 'b' / f) for f in files)
  a, c = (prvr.PrvrStore.open(tmp_path / x, 'charades') for x in 'ac')
  small_test = small['test']
  (va, ta), (vc, tc) = _arrays(a, small_test), _arrays(c, small_test)
  assert not any(np.allclose(x, y) for x, y in zip(va, vc)) and not any(np.allclose(x, y) for x, y in zip(ta, tc))
  np.testing.assert_array_equal(ta[0], store.text(small_test.cap_ids[0]))
  assert isinstance(c.video_source, prvr.BigFileFeatures) and prvr.validate(small_test, c) == []


def test_planted_codes_sit_in_a_real_window(planted):
  root, collections, _ = planted
  spans = [json.loads(line) for line in open(root / 'charades' / pp.SPANS_FILE, encoding='utf-8')]
  store = prvr.PrvrStore.open(root, 'charades')
  by_cap = {c.cap_id: c for coll in collections.values() for c in coll.captions}
  true = [s for s in spans if not s['distractor']]
  assert len(true) == len(by_cap)
  for s in true:
    caption = by_cap[s['cap_id']]
    frames = store.num_frames(caption.vid)
    assert s['vid'] == caption.vid and 1 <= s['last_frame'] - s['first_frame'] <= max(1, int(0.2 * frames))
    inside = [pp.window_frames(w, frames) for w in caption.windows]
    assert any(f <= s['first_frame'] and s['last_frame'] <= l for f, l in inside), s
  for s in spans:
    if s['distractor']:
      assert by_cap[s['cap_id']].vid != s['vid']


def test_planted_needs_the_caption_and_the_moment(planted):
  root, _, _ = planted
  test = prvr.load_collection(root, 'charades', 'test')
  store = prvr.PrvrStore.open(root, 'charades')
  model = pp.PlantedPrvrModel.from_store(root / 'charades')
  gt = test.caption_video
  chance = pm.chance_metrics(test.num_videos)['SumR']                  # 119 videos: 97.5
  oracle = pm.retrieval_metrics(pp.oracle_scores(model, store, test), gt)
  mean = pm.retrieval_metrics(pp.clip_mean_scores(model, store, test), gt)
  shuffled = pm.retrieval_metrics(pp.oracle_scores(model, store, test, pp.shuffled_caption_map(test)), gt)
  energy = pm.retrieval_metrics(pp.energy_scores(model, store, test), gt)
  assert oracle['R1'] > 35 and oracle['SumR'] > chance + 180, oracle
  assert abs(mean['SumR'] - chance) < 20 and mean['R1'] < 5, mean
  assert abs(shuffled['SumR'] - chance) < 20 and shuffled['R1'] < 5, shuffled
  assert mean['SumR'] < energy['SumR'] < oracle['SumR'], energy
  # The clip-mean carries no planted code at all: it is the background alone, whatever was planted.
  for vid in test.video_ids[:5]:
    frames = store.video(vid).astype(np.float64)
    plan_free = model.video_frames(vid, np.zeros((len(frames), model.dims.code)))
    np.testing.assert_allclose(frames.mean(0), plan_free.astype(np.float64).mean(0), atol=1e-5)


def test_planted_qvh_and_tokens(tmp_path):
  collections = pp.dataset_collections('qvh', str(ANNOTATIONS), limit=30)
  summary = pp.write_planted_prvr(collections, tmp_path, 'qvh', seed=0, text_kind='tokens')
  assert summary.num_videos == 90 and summary.num_true_spans == 90
  val = prvr.load_collection(tmp_path, 'qvh', 'val')
  store = prvr.PrvrStore.open(tmp_path, 'qvh')
  assert store.text_source.path.endswith('roberta_qvh_query_feat.hdf5')
  assert prvr.validate(val, store) == [] and store.video(val.video_ids[0]).shape == (150, 32)
  split = pb.PrvrSplit(val, store, pb.PrvrBatchConfig(text_kind='tokens'))
  assert split.num_frame_slots == 150 and split.num_token_slots <= 30


def test_planted_cli(tmp_path, capsys):
  assert pp.main(['--dataset=charades', f'--out={tmp_path}', '--limit=12', '--seed=1',
                  f'--annotations={ANNOTATIONS}']) == 0
  assert 'wrote' in capsys.readouterr().out
  assert prvr.load_collection(tmp_path, 'charades', 'train').num_videos > 0
  with pytest.raises(SystemExit):
    pp.main(['--dataset=tvr', f'--out={tmp_path}'])
