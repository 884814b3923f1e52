"""Tests of the Splice(+Boost) augmentation: invariants, determinism, online/offline agreement.

Features are traceable: clip c of video v holds the value v * 1000 + c in every entry.
"""
import json
import os

import numpy as np
import pytest

from amr_jax.projects.amr import augment
from amr_jax.data.records import MomentRecord

SLOWFAST_DIM = 6
CLIP_SHAPE = (4, 3)


def _make_record(qid, vid, windows, wrong_spans=None, duration=150.0):
  """A QVH-like record whose saliency scores encode (qid, clip): (qid, clip, clip % 5)."""
  clip_ids = [c for st, ed in windows for c in range(int(st) // 2, int(ed) // 2)]
  return MomentRecord(qid=qid, vid=vid, query=f"query {qid}", duration=duration, windows=tuple(windows),
                      relevant_clip_ids=tuple(clip_ids), saliency_scores=tuple((qid, c, c % 5) for c in clip_ids),
                      wrong_spans=None if wrong_spans is None else tuple(wrong_spans))


def _vid_number(vid):
  return int(vid.split("_")[1])


def _make_parts(vid, num_clips):
  """Traceable features of `vid`: every entry of clip c is vid_number * 1000 + c."""
  values = (_vid_number(vid) * 1000 + np.arange(num_clips)).astype(np.float32)  # [L]
  return {
      "slowfast": np.repeat(values[:, None], SLOWFAST_DIM, axis=1),  # [L, Ds]
      "clip": np.broadcast_to(values[:, None, None], (num_clips,) + CLIP_SHAPE).copy(),  # [L, 4, Dc]
  }


def _random_records(rng, num_records, vids=None):
  """Records with 1-3 GT windows and 0-2 wrong spans each, all disjoint and on the 2 s grid."""
  records = []
  for qid in range(num_records):
    duration = float(rng.choice([150, 150, 150, 126, 40]))
    num_clips = int(duration // 2)
    num_segments = int(rng.integers(1, 6))
    cuts = np.sort(rng.choice(np.arange(num_clips + 1), size=2 * num_segments, replace=False))
    spans = [(float(2 * cuts[2 * k]), float(2 * cuts[2 * k + 1])) for k in range(num_segments)]
    rng.shuffle(spans)
    num_true = int(rng.integers(1, min(3, num_segments) + 1))
    windows, wrong = spans[:num_true], spans[num_true:]
    vid = vids[qid] if vids is not None else f"vid_{qid}"
    records.append(_make_record(qid, vid, sorted(windows), wrong))
  return records


def _loader(records):
  lengths = {r.vid: int(r.duration // 2) for r in records}
  return lambda vid: _make_parts(vid, lengths[vid])


def _check_invariants(record, parts, info, bg, donor, bg_parts):
  num_clips = int(bg.duration // 2)
  # Labels inside the video, on the 2 s grid, consistent with the clip ids.
  for st, ed in record.windows:
    assert 0 <= st < ed <= bg.duration
    assert st % 2 == 0 and ed % 2 == 0
  expected_ids = [c for st, ed in record.windows for c in range(int(st) // 2, int(ed) // 2)]
  assert list(record.relevant_clip_ids) == expected_ids
  assert len(set(expected_ids)) == len(expected_ids)
  assert len(record.saliency_scores) == len(record.relevant_clip_ids)
  # Segments: sorted, >= 1 clip gap, inside the grid, 1 <= m <= n.
  segments = info.segments
  for seg in segments:
    assert 1 <= seg.m <= seg.n and 0 <= seg.begin and seg.end <= num_clips
  for prev, nxt in zip(segments, segments[1:]):
    assert nxt.begin >= prev.end + 1
  # Only true segments labelled.
  assert [(2.0 * s.begin, 2.0 * s.end) for s in info.true_segments] == list(record.windows)
  relevant = set(record.relevant_clip_ids)
  for seg in info.wrong_segments:
    assert not relevant & set(range(seg.begin, seg.end))
  # Features: spliced clips come from the donor segment in order; other clips untouched; parts agree.
  donor_number = _vid_number(donor.vid)
  covered = set()
  donor_scores = dict(zip(donor.relevant_clip_ids, donor.saliency_scores))
  for seg in segments:
    values = parts["slowfast"][seg.begin:seg.end, 0]
    donor_clips = (values - donor_number * 1000).astype(int)
    st_clip, ed_clip = int(seg.donor_window[0]) // 2, int(seg.donor_window[1]) // 2
    assert np.all(np.diff(donor_clips) > 0) and st_clip <= donor_clips[0] and donor_clips[-1] < ed_clip
    if seg.flag == augment.TRUE_SEGMENT:
      # Saliency carried: the scores of exactly the selected donor clips, in order.
      positions = [record.relevant_clip_ids.index(c) for c in range(seg.begin, seg.end)]
      assert [record.saliency_scores[p] for p in positions] == [donor_scores[c] for c in donor_clips]
    covered.update(range(seg.begin, seg.end))
  untouched = np.array([c not in covered for c in range(len(bg_parts["slowfast"]))])
  for name in ("slowfast", "clip"):
    assert parts[name].shape == bg_parts[name].shape and parts[name].dtype == bg_parts[name].dtype
    np.testing.assert_array_equal(parts[name][untouched], bg_parts[name][untouched])
  np.testing.assert_array_equal(parts["clip"][:, 0, 0], parts["slowfast"][:, 0])
  # Record fields.
  assert record.qid == donor.qid and record.query == donor.query
  assert record.duration == bg.duration and record.wrong_spans is None
  assert record.vid == f"{bg.vid}_aug_{info.aug_index}"


def test_splice_invariants_over_many_random_pairs():
  rng = np.random.default_rng(0)
  records = _random_records(rng, 40)
  num_kept = num_distractors = num_compressed = num_dropped = 0
  for trial in range(300):
    bg_index, donor_index = rng.choice(len(records), size=2, replace=False)
    bg, donor = records[bg_index], records[donor_index]
    bg_parts = _make_parts(bg.vid, int(bg.duration // 2))
    donor_parts = _make_parts(donor.vid, int(donor.duration // 2))
    bg_before = {k: v.copy() for k, v in bg_parts.items()}
    record, parts, info = augment.splice(bg, bg_parts, donor, donor_parts, np.random.default_rng(trial),
                                         aug_index=3)
    for name in bg_parts:  # inputs not modified
      np.testing.assert_array_equal(bg_parts[name], bg_before[name])
    num_dropped += info.num_dropped_segments > 0
    if record is None:
      assert info.skipped and parts == {}
      continue
    num_kept += 1
    num_distractors += info.num_distractors
    num_compressed += info.compression_ratio < 1
    _check_invariants(record, parts, info, bg, donor, bg_parts)
    assert 0 < info.true_coverage <= 1 and 0 < info.compression_ratio <= 1
  # The random cases exercise every branch.
  assert num_kept > 200 and num_distractors > 50 and num_compressed > 50 and num_dropped > 5


def test_splice_is_deterministic_and_seed_dependent():
  records = _random_records(np.random.default_rng(1), 2)
  bg, donor = records
  bg_parts, donor_parts = _make_parts(bg.vid, 75), _make_parts(donor.vid, 75)
  donor = donor.replace(windows=((0.0, 40.0),), relevant_clip_ids=tuple(range(20)),
                        saliency_scores=tuple((1, c, 0) for c in range(20)), wrong_spans=((50.0, 70.0),))
  first = augment.splice(bg, bg_parts, donor, donor_parts, np.random.default_rng(7), aug_index=0)
  second = augment.splice(bg, bg_parts, donor, donor_parts, np.random.default_rng(7), aug_index=0)
  assert first[0] == second[0] and first[2] == second[2]
  for name in bg_parts:
    np.testing.assert_array_equal(first[1][name], second[1][name])
  others = {augment.splice(bg, bg_parts, donor, donor_parts, np.random.default_rng(s), aug_index=0)[2].segments
            for s in range(10)}
  assert len(others) > 1


def test_splice_no_room_drops_this_and_later_segments():
  bg = _make_record(0, "vid_0", [(0.0, 2.0)], duration=20.0)  # 10 clips
  donor = _make_record(1, "vid_1", [(0.0, 12.0), (20.0, 36.0)], wrong_spans=[(14.0, 18.0)], duration=40.0)
  record, _, info = augment.splice(bg, _make_parts("vid_0", 10), donor, _make_parts("vid_1", 20),
                                   np.random.default_rng(0), aug_index=0, compress=False)
  # Window 1 (6 clips) fits at 0..4; the wrong span (2 clips) then needs begin <= 8; the 8-clip window cannot fit.
  assert info.segments[0].flag == augment.TRUE_SEGMENT and info.segments[0].m == 6
  assert info.num_dropped_segments >= 1
  assert all(seg.end <= 10 for seg in info.segments)
  assert record.windows == ((2.0 * info.segments[0].begin, 2.0 * info.segments[0].end),)


def test_splice_without_compression_or_wrong_spans():
  bg = _make_record(0, "vid_0", [(0.0, 2.0)])
  donor = _make_record(1, "vid_1", [(10.0, 20.0), (40.0, 44.0)], wrong_spans=[(24.0, 30.0)])
  record, parts, info = augment.splice(bg, _make_parts("vid_0", 75), donor, _make_parts("vid_1", 75),
                                       np.random.default_rng(3), aug_index=0, use_wrong_spans=False,
                                       compress=False)
  assert info.num_distractors == 0 and info.compression_ratio == 1.0
  assert [seg.m for seg in info.segments] == [5, 2]
  np.testing.assert_array_equal(parts["slowfast"][info.segments[0].begin:info.segments[0].end, 0],
                                1000 + np.arange(5, 10))
  assert record.saliency_scores == donor.saliency_scores


def test_splice_skips_what_the_reference_skips():
  bg = _make_record(0, "vid_0", [(0.0, 2.0)])
  donor = _make_record(1, "vid_1", [(100.0, 140.0)])
  rng = np.random.default_rng(0)
  # Background features shorter than duration // 2: the placement overflows -> skipped, with the reason.
  outcomes = [augment.splice(bg, _make_parts("vid_0", 30), donor, _make_parts("vid_1", 75),
                             np.random.default_rng(s), aug_index=0) for s in range(20)]
  skipped = [info for record, _, info in outcomes if record is None]
  assert skipped and all("background vid vid_0 has 30 clips" in info.skipped for info in skipped)
  # Donor features shorter than its window.
  record, _, info = augment.splice(bg, _make_parts("vid_0", 75), donor, _make_parts("vid_1", 50), rng,
                                   aug_index=0)
  assert record is None and "donor vid vid_1 has 50 clips" in info.skipped
  # No relevant window, no duration, window longer than the whole background.
  assert augment.splice(bg, _make_parts("vid_0", 75), donor.replace(windows=()), _make_parts("vid_1", 75), rng,
                        aug_index=0)[0] is None
  assert "no duration" in augment.splice(bg.replace(duration=None), _make_parts("vid_0", 75), donor,
                                         _make_parts("vid_1", 75), rng, aug_index=0)[2].skipped
  short_bg = _make_record(0, "vid_0", [(0.0, 2.0)], duration=20.0)
  record, _, info = augment.splice(short_bg, _make_parts("vid_0", 10), donor, _make_parts("vid_1", 75), rng,
                                   aug_index=0)
  assert record is None and "no relevant clip" in info.skipped and info.num_dropped_segments == 1
  with pytest.raises(ValueError, match="part names differ"):
    augment.splice(bg, {"slowfast": np.zeros((75, 2))}, donor, _make_parts("vid_1", 75), rng, aug_index=0)


def test_online_sample_is_reproducible_alone_and_donor_differs():
  records = _random_records(np.random.default_rng(2), 12)
  splicer = augment.OnlineSplicer(records, _loader(records), seed=5, passes=3)
  everything = list(augment.iter_augmented(records, _loader(records), seed=5, passes=3, include_skipped=True))
  assert len(everything) == len(splicer) == 36
  for record, parts, info in everything:
    again = splicer.sample(info.pass_index, info.bg_index)  # rebuilt alone, in another order
    assert again[0] == record and again[2] == info
    for name in parts:
      np.testing.assert_array_equal(again[1][name], parts[name])
  # Every donor differs from its background.
  for _, _, info in everything:
    assert info.donor_qid != records[info.bg_index].qid
  # pass_index selects one pass; a different seed gives different samples.
  second_pass = list(augment.iter_augmented(records, _loader(records), seed=5, passes=3, pass_index=1))
  assert [info for _, _, info in second_pass] == [i for r, _, i in everything if i.pass_index == 1 and r]
  other_seed = list(augment.iter_augmented(records, _loader(records), seed=6, passes=3, include_skipped=True))
  assert [i.donor_qid for _, _, i in other_seed] != [i.donor_qid for _, _, i in everything]


def test_online_vid_naming_and_missing_features():
  records = _random_records(np.random.default_rng(3), 6, vids=["vid_0", "vid_0", "vid_1", "vid_2", "vid_2",
                                                             "vid_2"])
  unique = augment.OnlineSplicer(records, _loader(records), seed=0, passes=2)
  assert [unique.aug_index(1, j) for j in range(6)] == [1, 3, 1, 1, 3, 5]
  reference = augment.OnlineSplicer(records, _loader(records), seed=0, passes=2, unique_vids=False)
  assert [reference.aug_index(1, j) for j in range(6)] == [1] * 6

  def failing_loader(vid):
    raise FileNotFoundError(f"no features for {vid}")

  record, parts, info = augment.OnlineSplicer(records, failing_loader, seed=0, passes=1).sample(0, 0)
  assert record is None and parts == {} and "FileNotFoundError" in info.skipped


def test_export_offline_matches_online(tmp_path):
  records = _random_records(np.random.default_rng(4), 10, vids=[f"vid_{k // 2}" for k in range(10)])
  load_parts = _loader(records)
  out_dir = str(tmp_path / "aug")
  jsonl_path = augment.export_offline(records, load_parts, out_dir, seed=11, passes=2)
  assert jsonl_path == os.path.join(out_dir, augment.AUG_JSONL)
  with open(jsonl_path) as rows_file:
    rows = [json.loads(line) for line in rows_file]
  online = list(augment.iter_augmented(records, load_parts, seed=11, passes=2))
  assert rows == [record.to_json() for record, _, _ in online]
  assert len({row["vid"] for row in rows}) == len(rows)  # unique_vids: no file written twice
  read_back = augment.qvh_parts_loader(out_dir)
  for record, parts, _ in online:
    stored = read_back(record.vid)
    for name in ("slowfast", "clip"):
      assert stored[name].dtype == parts[name].dtype and stored[name].shape == parts[name].shape
      assert stored[name].tobytes() == parts[name].tobytes()
  assert len(os.listdir(os.path.join(out_dir, augment.SLOWFAST_AUG_DIR))) == len(rows)
  assert len(os.listdir(os.path.join(out_dir, augment.CLIP_VID_AUG_DIR))) == len(rows)
  infos = augment.load_splice_infos(os.path.join(out_dir, augment.AUG_INFO_JSONL))
  assert infos == [info for _, _, info in online]


def test_qvh_parts_loader_reads_the_official_layout(tmp_path):
  for sub_dir in (augment.SLOWFAST_DIR, augment.CLIP_VID_DIR):
    os.makedirs(tmp_path / sub_dir)
  parts = _make_parts("vid_3", 7)
  np.savez(tmp_path / augment.SLOWFAST_DIR / "vid_3.npz", features=parts["slowfast"])
  np.save(tmp_path / augment.CLIP_VID_DIR / "vid_3.npy", parts["clip"])
  loaded = augment.qvh_parts_loader(str(tmp_path))("vid_3")
  for name in parts:
    np.testing.assert_array_equal(loaded[name], parts[name])
  assert augment.is_aug_vid("vid_3_aug_12") and not augment.is_aug_vid("vid_3")
  with pytest.raises(ValueError, match="lack"):
    augment.write_qvh_parts(str(tmp_path), "x", {"slowfast": parts["slowfast"]})


def test_export_offline_reference_naming_overwrites(tmp_path):
  records = _random_records(np.random.default_rng(5), 6, vids=["vid_0"] * 3 + ["vid_1"] * 3)
  jsonl_path = augment.export_offline(records, _loader(records), str(tmp_path), seed=0, passes=1,
                                      unique_vids=False)
  with open(jsonl_path) as rows_file:
    vids = [json.loads(line)["vid"] for line in rows_file]
  assert set(vids) <= {"vid_0_aug_0", "vid_1_aug_0"} and len(vids) > len(set(vids))
  assert len(os.listdir(tmp_path / augment.SLOWFAST_AUG_DIR)) == len(set(vids))
  info = augment.load_splice_infos(str(tmp_path / augment.AUG_INFO_JSONL))[0]
  row = info.to_json()
  assert {"compression_ratio", "num_distractors", "min_gap_clips", "true_coverage"} <= set(row)
