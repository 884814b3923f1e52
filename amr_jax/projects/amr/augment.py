"""AMR's feature-level Splice(+Boost) augmentation, per sample (online) and as a feature store (offline).

Reimplements `utils/augment_data.py` of SooLab/AMR (spec `amr.md` §4) with a seeded numpy Generator.

The procedure, per pass i and background sample j (every training query is the background once per pass):
  * a donor a != j is drawn; the new sample takes the donor's qid and query and the background's duration
    and features, and is named `f"{bg.vid}_aug_{i}"`;
  * the donor's GT windows (flag "true") and, with Boost, its mined `wrong_spans` (flag "wrong") are sorted by
    start and spliced into the background in that order: for a segment of n clips, when
    `begin > dur//2 - n` there is no room and this and all later segments are dropped; otherwise
    `begin ~ U{begin .. dur//2 - n}`, `m ~ U{1 .. n}`, m of the n donor clips are kept in order, they overwrite
    the background clips `[begin, begin + m)` in every feature part, and `begin = begin + m + 1`;
  * only true segments become labels: window `[2*begin, 2*end]` s, clip ids `begin..end-1`, and the saliency
    scores of the kept donor clips (the donor's scores are consumed in clip order by its true segments);
  * a sample whose splice would raise in the reference (features shorter than the grid, too few saliency
    scores, a segment shorter than one clip) is skipped, and so is a sample with no relevant clip.

Differences from the reference, all documented where they happen:
  * The reference draws from Python's `random` module **unseeded**, so its output cannot be regenerated. Here
    every sample (pass i, background j) draws from its own `np.random.default_rng([seed, i, j])`, first the
    donor and then the splice, so any sample can be rebuilt alone (inside a tf.data map, or after a resume)
    and the online and offline forms give byte-identical results.
  * `dur = bg.duration` is used as in the reference. When the background features are shorter than a
    placement needs, the reference's numpy assignment raises and the sample is skipped; here the same
    samples are skipped, with the reason recorded in `SpliceInfo.skipped`.
  * The reference names every sample of pass i `{bg.vid}_aug_{i}`, so two training queries on the same video
    write the same feature file and the earlier sample's labels end up describing the later sample's
    features. With `unique_vids=True` (default) the k-th query (k = 0, 1, ...) on a video gets
    `aug_index = i + k * passes`, which is `i` whenever a video has one query; `unique_vids=False` keeps the
    reference naming (the offline export then overwrites, as the reference did, and logs how often).
  * `compress=False` (not in the reference) keeps all n clips of every segment (m = n); it serves the
    phased curriculum in `amr_jax/curriculum.py`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from amr_jax.data.records import MomentRecord, Window

PartDict = dict[str, np.ndarray]
LoadParts = Callable[[str], Mapping[str, np.ndarray]]
WriteParts = Callable[[str, str, Mapping[str, np.ndarray]], None]

TRUE_SEGMENT = "true"
WRONG_SEGMENT = "wrong"

AUG_JSONL = "highlight_train_aug.jsonl"
AUG_INFO_JSONL = "highlight_train_aug_info.jsonl"
SLOWFAST_DIR = "slowfast_features"
CLIP_VID_DIR = "clip_b32_vid_k4"
SLOWFAST_AUG_DIR = "slowfast_features_aug"
CLIP_VID_AUG_DIR = "clip_b32_vid_k4_aug"
QVH_PART_NAMES = ("slowfast", "clip")

_AUG_VID_RE = re.compile(r"_aug_\d+$")

# Errors a feature loader raises for missing or unreadable files; the reference skipped such samples.
_LOAD_ERRORS = (OSError, KeyError, ValueError, EOFError)


@dataclasses.dataclass(frozen=True)
class SegmentPlacement:
  """One donor segment spliced into the background.

  Attributes:
    flag: "true" (a donor GT window, becomes a label) or "wrong" (a donor wrong span, a distractor).
    donor_window: the segment in the donor video, seconds.
    n: clips in the donor segment, `(ed - st) // 2`.
    m: clips kept (1 <= m <= n); m < n is temporal down-sampling.
    begin: first background clip overwritten; the segment covers clips [begin, begin + m).
  """
  flag: str
  donor_window: Window
  n: int
  m: int
  begin: int

  @property
  def end(self) -> int:
    """One past the last background clip overwritten."""
    return self.begin + self.m


@dataclasses.dataclass(frozen=True)
class SpliceInfo:
  """What one splice did, and the difficulty statistics derived from it.

  Attributes:
    bg_qid: qid of the background sample.
    bg_vid: vid of the background video.
    donor_qid: qid of the donor (the new sample's qid).
    donor_vid: vid of the donor video.
    aug_index: the i of the new vid `{bg_vid}_aug_{i}`.
    num_clips: the placement grid, `bg.duration // 2` clips.
    segments: the placed segments, in placement (= start) order.
    num_dropped_segments: donor segments dropped for lack of room (the reference's `break`).
    skipped: why no sample was produced, or None when one was.
    pass_index: the augmentation pass (-1 when `splice` was called directly).
    bg_index: index of the background in the record list (-1 when `splice` was called directly).
  """
  bg_qid: int
  bg_vid: str
  donor_qid: int
  donor_vid: str
  aug_index: int
  num_clips: int
  segments: tuple[SegmentPlacement, ...] = ()
  num_dropped_segments: int = 0
  skipped: Optional[str] = None
  pass_index: int = -1
  bg_index: int = -1

  @property
  def kept(self) -> bool:
    """Whether the splice produced a sample."""
    return self.skipped is None

  @property
  def true_segments(self) -> tuple[SegmentPlacement, ...]:
    return tuple(s for s in self.segments if s.flag == TRUE_SEGMENT)

  @property
  def wrong_segments(self) -> tuple[SegmentPlacement, ...]:
    return tuple(s for s in self.segments if s.flag == WRONG_SEGMENT)

  @property
  def compression_ratio(self) -> float:
    """Mean m/n over the placed true segments (1 = no down-sampling; 1 when none was placed)."""
    true_segments = self.true_segments
    if not true_segments:
      return 1.0
    return float(np.mean([s.m / s.n for s in true_segments]))

  @property
  def num_distractors(self) -> int:
    """Wrong spans placed as distractors."""
    return len(self.wrong_segments)

  @property
  def min_gap_clips(self) -> Optional[int]:
    """Fewest untouched clips between a placed true segment and a placed distractor (None without both)."""
    gaps = []
    for true_seg in self.true_segments:
      for wrong_seg in self.wrong_segments:
        if true_seg.end <= wrong_seg.begin:
          gaps.append(wrong_seg.begin - true_seg.end)
        else:
          gaps.append(true_seg.begin - wrong_seg.end)
    return min(gaps) if gaps else None

  @property
  def true_coverage(self) -> float:
    """Fraction of the video's clips (`num_clips`) covered by the placed true moments."""
    if self.num_clips <= 0:
      return 0.0
    return sum(s.m for s in self.true_segments) / self.num_clips

  def to_json(self) -> dict[str, Any]:
    """A json-able dict (the offline export writes one per augmented row)."""
    row = dataclasses.asdict(self)
    row["segments"] = [dataclasses.asdict(s) for s in self.segments]
    for segment in row["segments"]:
      segment["donor_window"] = list(segment["donor_window"])
    row["compression_ratio"] = self.compression_ratio
    row["num_distractors"] = self.num_distractors
    row["min_gap_clips"] = self.min_gap_clips
    row["true_coverage"] = self.true_coverage
    return row

  @classmethod
  def from_json(cls, row: Mapping[str, Any]) -> "SpliceInfo":
    """Inverse of `to_json` (derived statistics are recomputed, not read)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in row.items() if k in fields}
    kwargs["segments"] = tuple(
        SegmentPlacement(flag=s["flag"], donor_window=tuple(s["donor_window"]), n=int(s["n"]), m=int(s["m"]),
                         begin=int(s["begin"])) for s in row.get("segments", ()))
    return cls(**kwargs)


def splice(bg: MomentRecord, bg_parts: Mapping[str, np.ndarray], donor: MomentRecord,
           donor_parts: Mapping[str, np.ndarray], rng: np.random.Generator, *, aug_index: int,
           use_wrong_spans: bool = True,
           compress: bool = True) -> tuple[Optional[MomentRecord], PartDict, SpliceInfo]:
  """Splices the donor's true moments (and wrong spans) into the background's features (`amr.md` §4).

  Args:
    bg: the background sample; gives the vid, the duration and the features.
    bg_parts: raw per-clip features of `bg.vid` by part name, e.g. {'slowfast': [L, 2304],
      'clip': [L, 4, 768]}. Parts may differ in length (the official files sometimes do); each is edited at
      the same clip indices. Not modified.
    donor: the donor sample; gives qid, query, GT windows, saliency scores and `wrong_spans`.
    donor_parts: raw per-clip features of `donor.vid`, same part names and trailing shapes as `bg_parts`.
    rng: the draws, in the reference's order: per segment `begin`, then `m`, then the kept clips.
    aug_index: the i of the new vid `f"{bg.vid}_aug_{i}"`.
    use_wrong_spans: splice the donor's `wrong_spans` as distractors (Boost); False splices true moments only.
    compress: down-sample each segment to a random m <= n clips (reference); False keeps all n clips.

  Returns:
    (record, parts, info). `record` is the new sample or None when skipped (`info.skipped` says why);
    `parts` has the new features (empty when skipped).

  Raises:
    ValueError: when `bg_parts` is empty or the part names of background and donor differ (a caller bug,
      not a data problem).
  """
  if not bg_parts:
    raise ValueError("splice: bg_parts is empty")
  if set(bg_parts) != set(donor_parts):
    raise ValueError(f"splice: part names differ: background {sorted(bg_parts)} vs donor {sorted(donor_parts)}")
  num_clips = int(bg.duration // 2) if bg.duration is not None else 0
  placed: list[SegmentPlacement] = []

  def make_info(skipped: Optional[str], num_dropped: int = 0) -> SpliceInfo:
    return SpliceInfo(bg_qid=bg.qid, bg_vid=bg.vid, donor_qid=donor.qid, donor_vid=donor.vid,
                      aug_index=aug_index, num_clips=num_clips, segments=tuple(placed),
                      num_dropped_segments=num_dropped, skipped=skipped)

  def skip(reason: str, num_dropped: int = 0) -> tuple[None, PartDict, SpliceInfo]:
    return None, {}, make_info(reason, num_dropped)

  if bg.duration is None:
    return skip(f"background qid {bg.qid} (vid {bg.vid}) has no duration")
  if not donor.windows:
    return skip(f"donor qid {donor.qid} has no relevant window")
  # Stable sort: a true window and a wrong span with the same start keep the order windows-then-spans.
  segments = [(tuple(w), TRUE_SEGMENT) for w in donor.windows]
  if use_wrong_spans and donor.wrong_spans:
    segments += [(tuple(w), WRONG_SEGMENT) for w in donor.wrong_spans]
  segments.sort(key=lambda segment: segment[0][0])

  remaining_scores = list(donor.saliency_scores) if donor.saliency_scores is not None else None
  out_parts = {name: np.array(part, copy=True) for name, part in bg_parts.items()}
  windows: list[Window] = []
  clip_ids: list[int] = []
  saliency: list[tuple[int, ...]] = []
  num_dropped = 0
  begin = 0
  for seg_index, ((st, ed), flag) in enumerate(segments):
    is_true = flag == TRUE_SEGMENT
    n = int((ed - st) // 2)
    st_clip, ed_clip = int(st // 2), int(ed // 2)
    seg_scores = None
    if is_true and remaining_scores is not None:
      seg_scores, remaining_scores = remaining_scores[:n], remaining_scores[n:]
    if begin > num_clips - n:  # No room: drop this and all later segments.
      num_dropped = len(segments) - seg_index
      break
    if n < 1:  # The reference's randint(1, n) raises here.
      return skip(f"donor qid {donor.qid} {flag} segment {[st, ed]} is shorter than one 2 s clip")
    begin = int(rng.integers(begin, num_clips - n, endpoint=True))
    if compress:
      m = int(rng.integers(1, n, endpoint=True))
      kept = np.sort(rng.choice(n, size=m, replace=False))  # [m] kept donor clips, in order
    else:
      m = n
      kept = np.arange(n)
    end = begin + m
    for name, part in out_parts.items():
      donor_part = np.asarray(donor_parts[name])
      if donor_part.shape[1:] != part.shape[1:]:
        return skip(f"part {name!r}: donor vid {donor.vid} clips have shape {donor_part.shape[1:]}, background "
                    f"vid {bg.vid} clips {part.shape[1:]}")
      donor_available = max(0, min(ed_clip, donor_part.shape[0]) - st_clip)
      if kept[-1] >= donor_available:
        return skip(f"part {name!r}: donor vid {donor.vid} has {donor_part.shape[0]} clips, too few for its "
                    f"{flag} segment {[st, ed]}")
      if end > part.shape[0]:
        return skip(f"part {name!r}: background vid {bg.vid} has {part.shape[0]} clips, fewer than the "
                    f"{num_clips} of its duration {bg.duration} s (a segment needs clips {begin}..{end - 1})")
      part[begin:end] = donor_part[st_clip:ed_clip][kept]
    if is_true and seg_scores is not None and kept[-1] >= len(seg_scores):
      return skip(f"donor qid {donor.qid} has fewer saliency scores than relevant clips")
    placed.append(SegmentPlacement(flag=flag, donor_window=(st, ed), n=n, m=m, begin=begin))
    if is_true:
      windows.append((float(2 * begin), float(2 * end)))
      clip_ids.extend(range(begin, end))
      if seg_scores is not None:
        saliency.extend(tuple(int(s) for s in seg_scores[k]) for k in kept)
    begin = end + 1  # At least one background clip between consecutive segments.

  if not clip_ids:
    return skip(f"no relevant clip placed (donor qid {donor.qid}: every true window too long for "
                f"{num_clips} clips)", num_dropped)
  record = MomentRecord(
      qid=donor.qid, vid=f"{bg.vid}_aug_{aug_index}", query=donor.query, duration=bg.duration,
      windows=tuple(windows), relevant_clip_ids=tuple(clip_ids),
      saliency_scores=tuple(saliency) if donor.saliency_scores is not None else None, wrong_spans=None,
      source=f"splice(bg qid {bg.qid}, donor qid {donor.qid})", line=0)
  return record, out_parts, make_info(None, num_dropped)


def _occurrence_indices(records: Sequence[MomentRecord]) -> list[int]:
  """For each record, how many earlier records share its vid."""
  seen: collections.Counter[str] = collections.Counter()
  occurrences = []
  for record in records:
    occurrences.append(seen[record.vid])
    seen[record.vid] += 1
  return occurrences


class OnlineSplicer:
  """Index-addressable Splice augmentation: sample (pass i, background j) depends on (seed, i, j) only.

  `sample(i, j)` draws the donor and the splice from `np.random.default_rng([seed, i, j])`, so a tf.data
  pipeline can map over (i, j) in any order, and a resumed run rebuilds exactly the samples it would have
  seen. Iterating gives passes 0..passes-1, backgrounds 0..N-1, skipping samples the reference would drop.
  """

  def __init__(self, records: Sequence[MomentRecord], load_parts: LoadParts, seed: int, passes: int, *,
               use_wrong_spans: bool = True, compress: bool = True, unique_vids: bool = True):
    """Builds the splicer.

    Args:
      records: the training samples (backgrounds and donors), e.g. with Boost `wrong_spans`.
      load_parts: vid -> raw per-clip features by part name (see `splice`); called twice per sample, so cache
        inside it if loading is slow.
      seed: non-negative seed; everything derives from it.
      passes: number of augmentation passes (the reference's `iter_num = 10`).
      use_wrong_spans: splice wrong spans as distractors (Boost).
      compress: random temporal down-sampling of spliced segments (reference); False keeps every clip.
      unique_vids: give the k-th query on a video `aug_index = i + k * passes` (see the module docstring);
        False names every sample of pass i `{vid}_aug_{i}` as the reference does.
    """
    if len(records) < 2:
      raise ValueError(f"OnlineSplicer needs at least 2 records (a donor != background), got {len(records)}")
    if seed < 0 or passes < 1:
      raise ValueError(f"OnlineSplicer: need seed >= 0 and passes >= 1, got seed={seed}, passes={passes}")
    self.records = list(records)
    self.load_parts = load_parts
    self.seed = int(seed)
    self.passes = int(passes)
    self.use_wrong_spans = use_wrong_spans
    self.compress = compress
    self.unique_vids = unique_vids
    self._occurrences = _occurrence_indices(self.records)

  def __len__(self) -> int:
    """Number of (pass, background) pairs, kept or not."""
    return self.passes * len(self.records)

  def aug_index(self, pass_index: int, bg_index: int) -> int:
    """The i of the vid `{bg.vid}_aug_{i}` for this sample."""
    if not self.unique_vids:
      return pass_index
    return pass_index + self.passes * self._occurrences[bg_index]

  def rng(self, pass_index: int, bg_index: int) -> np.random.Generator:
    """The generator of sample (pass_index, bg_index); draws the donor first, then the splice."""
    return np.random.default_rng([self.seed, pass_index, bg_index])

  def donor_index(self, rng: np.random.Generator, bg_index: int) -> int:
    """A donor index uniform over all records except `bg_index`."""
    donor = int(rng.integers(0, len(self.records) - 1))
    return donor + 1 if donor >= bg_index else donor

  def sample(self, pass_index: int, bg_index: int) -> tuple[Optional[MomentRecord], PartDict, SpliceInfo]:
    """Builds sample (pass_index, bg_index); the record is None when the reference would skip it."""
    if not 0 <= pass_index < self.passes or not 0 <= bg_index < len(self.records):
      raise IndexError(f"sample ({pass_index}, {bg_index}) outside {self.passes} passes x {len(self.records)}")
    rng = self.rng(pass_index, bg_index)
    donor_index = self.donor_index(rng, bg_index)
    bg, donor = self.records[bg_index], self.records[donor_index]
    aug_index = self.aug_index(pass_index, bg_index)
    try:
      bg_parts = self.load_parts(bg.vid)
      donor_parts = self.load_parts(donor.vid)
    except _LOAD_ERRORS as err:
      info = SpliceInfo(bg_qid=bg.qid, bg_vid=bg.vid, donor_qid=donor.qid, donor_vid=donor.vid,
                        aug_index=aug_index, num_clips=int(bg.duration // 2) if bg.duration else 0,
                        skipped=f"loading features failed: {type(err).__name__}: {err}")
      return None, {}, dataclasses.replace(info, pass_index=pass_index, bg_index=bg_index)
    record, parts, info = splice(bg, bg_parts, donor, donor_parts, rng, aug_index=aug_index,
                                 use_wrong_spans=self.use_wrong_spans, compress=self.compress)
    return record, parts, dataclasses.replace(info, pass_index=pass_index, bg_index=bg_index)

  def iter_pass(self, pass_index: int, *, include_skipped: bool = False
                ) -> Iterator[tuple[Optional[MomentRecord], PartDict, SpliceInfo]]:
    """Samples of one pass in background order (skipped ones only with `include_skipped`)."""
    for bg_index in range(len(self.records)):
      record, parts, info = self.sample(pass_index, bg_index)
      if record is not None or include_skipped:
        yield record, parts, info

  def __iter__(self) -> Iterator[tuple[MomentRecord, PartDict, SpliceInfo]]:
    for pass_index in range(self.passes):
      yield from self.iter_pass(pass_index)


def iter_augmented(records: Sequence[MomentRecord], load_parts: LoadParts, seed: int, passes: int, *,
                   pass_index: Optional[int] = None, include_skipped: bool = False, use_wrong_spans: bool = True,
                   compress: bool = True, unique_vids: bool = True
                   ) -> Iterator[tuple[Optional[MomentRecord], PartDict, SpliceInfo]]:
  """Yields (record, parts, info) of the online augmentation, deterministically from `seed`.

  Args:
    records: training samples (backgrounds and donors).
    load_parts: vid -> raw per-clip features by part name.
    seed: the seed; sample (i, j) uses `np.random.default_rng([seed, i, j])` alone.
    passes: number of passes (reference: 10). Also fixes the vid numbering with `unique_vids`.
    pass_index: only this pass (e.g. one pass per epoch); None yields passes 0..passes-1.
    include_skipped: also yield skipped samples as (None, {}, info).
    use_wrong_spans: see `OnlineSplicer`.
    compress: see `OnlineSplicer`.
    unique_vids: see `OnlineSplicer`.

  Yields:
    (record, parts, info) in (pass, background) order.
  """
  splicer = OnlineSplicer(records, load_parts, seed, passes, use_wrong_spans=use_wrong_spans, compress=compress,
                          unique_vids=unique_vids)
  pass_indices = range(passes) if pass_index is None else [pass_index]
  for i in pass_indices:
    yield from splicer.iter_pass(i, include_skipped=include_skipped)


def is_aug_vid(vid: str) -> bool:
  """Whether `vid` names an augmented copy (`{vid}_aug_{i}`)."""
  return _AUG_VID_RE.search(vid) is not None


def qvh_parts_loader(feature_dir: str) -> Callable[[str], PartDict]:
  """A `load_parts` over the official QVHighlights/AMR layout, raw (not normalised, not truncated).

  Returns {'slowfast': `slowfast_features/{vid}.npz['features']` [L, 2304], 'clip': `clip_b32_vid_k4/{vid}.npy`
  [L, 4, 768]}; vids `{vid}_aug_{i}` are read from the `*_aug` directories.

  Args:
    feature_dir: root of the feature store.
  """

  def load_parts(vid: str) -> PartDict:
    slowfast_dir, clip_dir = (SLOWFAST_AUG_DIR, CLIP_VID_AUG_DIR) if is_aug_vid(vid) else (SLOWFAST_DIR,
                                                                                          CLIP_VID_DIR)
    with np.load(os.path.join(feature_dir, slowfast_dir, f"{vid}.npz")) as npz:
      slowfast = npz["features"]  # [L, 2304]
    clip = np.load(os.path.join(feature_dir, clip_dir, f"{vid}.npy"))  # [L, 4, 768]
    return {"slowfast": slowfast, "clip": clip}

  return load_parts


def write_qvh_parts(out_dir: str, vid: str, parts: Mapping[str, np.ndarray]) -> None:
  """Writes augmented features in the official layout under `out_dir`.

  `slowfast_features_aug/{vid}.npz` (key `features`, from part 'slowfast' [L, Ds]) and
  `clip_b32_vid_k4_aug/{vid}.npy` (from part 'clip' [L, 4, Dc]).
  """
  missing = [name for name in QVH_PART_NAMES if name not in parts]
  if missing:
    raise ValueError(f"write_qvh_parts: parts {sorted(parts)} lack {missing} (the qvh layout needs "
                     f"{list(QVH_PART_NAMES)})")
  np.savez(os.path.join(out_dir, SLOWFAST_AUG_DIR, f"{vid}.npz"), features=parts["slowfast"])
  np.save(os.path.join(out_dir, CLIP_VID_AUG_DIR, f"{vid}.npy"), parts["clip"])


def export_offline(records: Sequence[MomentRecord], load_parts: LoadParts, out_dir: str, seed: int, passes: int,
                   *, write_parts: Optional[WriteParts] = None, layout: str = "qvh", use_wrong_spans: bool = True,
                   compress: bool = True, unique_vids: bool = True) -> str:
  """Writes the augmented set the reference's `augment_data.py` writes: features plus annotations.

  Under `out_dir`: the features of every kept sample (layout 'qvh': `slowfast_features_aug/{vid}_aug_{i}.npz`
  and `clip_b32_vid_k4_aug/{vid}_aug_{i}.npy`), `highlight_train_aug.jsonl` (only augmented samples, QVH rows
  via `MomentRecord.to_json`) and, line-aligned with it, `highlight_train_aug_info.jsonl` (`SpliceInfo.to_json`,
  for the curriculum). Samples equal `iter_augmented` with the same arguments.

  Args:
    records: training samples (backgrounds and donors).
    load_parts: vid -> raw per-clip features by part name.
    out_dir: output root (created if needed).
    seed: the seed.
    passes: number of passes (reference: 10).
    write_parts: (out_dir, vid, parts) -> None; overrides `layout`.
    layout: 'qvh' (parts 'slowfast' and 'clip'), used when `write_parts` is None.
    use_wrong_spans: see `OnlineSplicer`.
    compress: see `OnlineSplicer`.
    unique_vids: see `OnlineSplicer`.

  Returns:
    The path of `highlight_train_aug.jsonl`.
  """
  if write_parts is None:
    if layout != "qvh":
      raise ValueError(f"export_offline: unknown layout {layout!r} (known: 'qvh'; or pass write_parts)")
    write_parts = write_qvh_parts
    for sub_dir in (SLOWFAST_AUG_DIR, CLIP_VID_AUG_DIR):
      os.makedirs(os.path.join(out_dir, sub_dir), exist_ok=True)
  os.makedirs(out_dir, exist_ok=True)
  jsonl_path = os.path.join(out_dir, AUG_JSONL)
  info_path = os.path.join(out_dir, AUG_INFO_JSONL)
  skip_examples: list[str] = []
  num_skipped = 0
  written_vids: collections.Counter[str] = collections.Counter()
  num_kept = 0
  with open(jsonl_path + ".tmp", "w") as rows_file, open(info_path + ".tmp", "w") as info_file:
    for record, parts, info in iter_augmented(records, load_parts, seed, passes, include_skipped=True,
                                              use_wrong_spans=use_wrong_spans, compress=compress,
                                              unique_vids=unique_vids):
      if record is None:
        num_skipped += 1
        if len(skip_examples) < 3:
          skip_examples.append(f"pass {info.pass_index} bg {info.bg_index}: {info.skipped}")
        continue
      write_parts(out_dir, record.vid, parts)
      written_vids[record.vid] += 1
      rows_file.write(json.dumps(record.to_json()) + "\n")
      info_file.write(json.dumps(info.to_json()) + "\n")
      num_kept += 1
  os.replace(jsonl_path + ".tmp", jsonl_path)
  os.replace(info_path + ".tmp", info_path)
  overwritten = sum(count - 1 for count in written_vids.values())
  logging.info("export_offline: %d augmented samples from %d records x %d passes -> %s; skipped %d%s",
               num_kept, len(records), passes, jsonl_path, num_skipped,
               f", e.g. {'; '.join(skip_examples)}" if skip_examples else "")
  if overwritten:
    logging.warning("export_offline: %d feature files were overwritten by a later sample with the same vid "
                    "(unique_vids=False reproduces the reference's naming); their earlier rows' labels do not "
                    "match the features", overwritten)
  return jsonl_path


def load_splice_infos(path: str) -> list[SpliceInfo]:
  """Reads `highlight_train_aug_info.jsonl` (one `SpliceInfo` per augmented row, same order)."""
  with open(path) as info_file:
    return [SpliceInfo.from_json(json.loads(line)) for line in info_file if line.strip()]


def make_online_sampler(records: Sequence[MomentRecord], video_cache: Mapping[str, np.ndarray], seed: int,
                        passes: int, *, use_wrong_spans: bool = True):
  """Index-addressable online augmentation over an in-memory video cache, for the training pipeline.

  A dry pass over placeholder arrays (same lengths, width 1: the random draws depend only on lengths) lists
  the kept (pass, background) samples and their SpliceInfo without copying features. Returns
  `(sample_fn, num_samples, infos)` where `sample_fn(index, rng) -> (record, video [L, Dv])`.
  """
  dry = OnlineSplicer(records, lambda vid: {'video': np.zeros((len(video_cache[vid]), 1), np.float32)}, seed,
                      passes, use_wrong_spans=use_wrong_spans)
  real = OnlineSplicer(records, lambda vid: {'video': video_cache[vid]}, seed, passes,
                       use_wrong_spans=use_wrong_spans)
  kept, infos = [], []
  for i in range(passes):
    for j in range(len(records)):
      record, _, info = dry.sample(i, j)
      if record is not None:
        kept.append((i, j))
        infos.append(info)
  if not kept:
    raise ValueError('online augmentation kept no sample (no record has a window that fits a background)')

  def sample_fn(index: int, rng: np.random.Generator):
    del rng  # the splice draws come from (seed, pass, background) alone
    record, parts, _ = real.sample(*kept[index])
    return record, parts['video']

  return sample_fn, len(kept), infos
