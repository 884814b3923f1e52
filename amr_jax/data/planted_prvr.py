"""Planted PRVR store: synthetic frame and caption features keyed by real video ids and cap_ids (Charades, QVH).

Codes sit in real windows, zero-mean over each video, with weaker distractors: caption AND moment are needed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import scipy.signal

from amr_jax.data import prvr
from amr_jax.data.planted import query_words, stable_rng

GENERATOR_VERSION = 1
META_FILE = 'planted_prvr.json'
SPANS_FILE = 'planted_prvr_spans.jsonl'

FRAME_SEC = 1.0             # one stored frame vector per second of video
DEFAULT_DURATION = 30.0     # seconds, for a video with no duration and no window
VIDEO_MEAN_NORM = 0.5       # per-video constant offset (norm per frame vector)
VIDEO_DRIFT_NORM = 0.5      # slowly varying AR(1) background
VIDEO_DRIFT_RHO = 0.9       # AR(1) coefficient per frame
VIDEO_WHITE_NORM = 0.3      # per-frame white noise
TEXT_NOISE_NORM = 0.3       # caption vector noise
SIGNAL_SCALE = 1.0          # planted code norm per frame in a true span
WORD_SHARE = 0.5            # squared weight of the word part of a caption code (the rest is the caption's own)
MAX_SPAN_FRACTION = 0.2     # a true span covers at most this fraction of its video's frames
NUM_DISTRACTORS = 2         # distractor spans per true span (codes of other captions of the same split)
DISTRACTOR_PEAK = 0.6       # distractor amplitude relative to a true span (same length)
MAX_TEXT_TOKENS = 32        # token variant: up to 31 words + the sentence token


@dataclasses.dataclass(frozen=True)
class PrvrDims:
  """Widths of a planted PRVR store."""
  video: int
  text: int
  code: int


# real: the AMDNet release (CLIP ViT-B/32 frames, 512-d, and CLIP sentence vectors, 512-d; spec "Inputs").
DIMS = {'tiny': PrvrDims(video=32, text=32, code=16), 'real': PrvrDims(video=512, text=512, code=128)}
# FeatureData/{visual_feature}/ of the original configs (video2frames.txt lives there).
VISUAL_FEATURE = {'charades': 'i3d_rgb_lgi', 'tvr': 'i3d_resnet', 'activitynet': 'i3d', 'qvh': 'clip_vit_32'}


def prvr_dims(dims: str) -> PrvrDims:
  if dims not in DIMS:
    raise ValueError(f'unknown dims {dims!r} (expected one of {", ".join(DIMS)})')
  return DIMS[dims]


def _unit(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x)
  return x / norm if norm > 0 else x


def _orthonormal_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  """[rows, cols] with orthonormal rows (rows <= cols), from the QR of a Gaussian matrix (signs fixed)."""
  q, r = np.linalg.qr(rng.standard_normal((cols, rows)))
  return (q * np.sign(np.diag(r))[None, :]).T


def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class PlantedPrvrModel:
  """The generative model: caption codes, the two projections, and decoding features back to codes."""

  def __init__(self, seed: int = 0, dims: str = 'tiny'):
    self.seed = int(seed)
    self.dims_name = dims
    self.dims = prvr_dims(dims)
    d = self.dims
    rng = stable_rng(self.seed, 'prvr-projection', dims)
    # Orthonormal rows: a unit code maps to a unit vector and decoding (the transpose) amplifies no noise.
    self.video_projection = _orthonormal_rows(rng, d.code, d.video)    # [C, Dv]
    self.text_projection = _orthonormal_rows(rng, d.code, d.text)      # [C, Dq]
    self._video_inverse = self.video_projection.T                       # [Dv, C]
    self._text_inverse = self.text_projection.T                         # [Dq, C]
    self._words: Dict[str, np.ndarray] = {}
    self._codes: Dict[str, np.ndarray] = {}

  @classmethod
  def from_store(cls, collection_dir) -> 'PlantedPrvrModel':
    """The model that wrote the planted collection at `collection_dir` (from its planted_prvr.json)."""
    with open(os.path.join(os.fspath(collection_dir), META_FILE), encoding='utf-8') as f:
      meta = json.load(f)
    return cls(seed=meta['seed'], dims=meta['dims'])

  def word_code(self, word: str) -> np.ndarray:
    if word not in self._words:
      self._words[word] = _unit(stable_rng(self.seed, 'prvr-word', word).standard_normal(self.dims.code))
    return self._words[word]

  def caption_code(self, cap_id: str, text: str) -> np.ndarray:
    """[C] unit code: sqrt(WORD_SHARE) * (normalised sum of word codes) + the rest from the cap_id alone.

    Captions with the same words share half their code; equal sentences of two videos stay distinguishable.
    """
    key = cap_id + '\x1f' + text
    if key not in self._codes:
      words = np.zeros(self.dims.code)
      for word in query_words(text):
        words += self.word_code(word)
      own = _unit(stable_rng(self.seed, 'prvr-caption', cap_id).standard_normal(self.dims.code))
      self._codes[key] = _unit(math.sqrt(WORD_SHARE) * _unit(words) + math.sqrt(1.0 - WORD_SHARE) * own)
    return self._codes[key]

  def text_vector(self, caption: prvr.Caption) -> np.ndarray:
    """[Dq] float32 sentence vector: the projected caption code plus noise."""
    code = self.caption_code(caption.cap_id, caption.text)
    noise = stable_rng(self.seed, 'prvr-text', caption.cap_id).standard_normal(self.dims.text)
    vector = code @ self.text_projection + noise * (TEXT_NOISE_NORM / math.sqrt(self.dims.text))
    return vector.astype(np.float32)

  def text_tokens(self, caption: prvr.Caption) -> np.ndarray:
    """[T, Dq] float32 token variant: one token per word (its word code), then the sentence vector."""
    words = query_words(caption.text)[:MAX_TEXT_TOKENS - 1]
    codes = np.stack([self.word_code(w) for w in words] + [self.caption_code(caption.cap_id, caption.text)])
    noise = stable_rng(self.seed, 'prvr-tokens', caption.cap_id).standard_normal((len(codes), self.dims.text))
    return (codes @ self.text_projection + noise * (TEXT_NOISE_NORM / math.sqrt(self.dims.text))).astype(np.float32)

  def video_frames(self, vid: str, signal: np.ndarray) -> np.ndarray:
    """[F, Dv] float32 frames: background (offset + AR(1) drift + white noise) plus the projected codes.

    Args:
      vid: seeds the background.
      signal: [F, C] the planted codes per frame (amplitudes included).
    """
    frames, width = signal.shape[0], self.dims.video
    rng = stable_rng(self.seed, 'prvr-video', vid)
    scale = 1.0 / math.sqrt(width)
    mean = rng.standard_normal(width) * VIDEO_MEAN_NORM
    innovations = rng.standard_normal((frames, width))
    inputs = innovations * math.sqrt(1.0 - VIDEO_DRIFT_RHO ** 2)
    inputs[0] = innovations[0]
    drift = scipy.signal.lfilter([1.0], [1.0, -VIDEO_DRIFT_RHO], inputs, axis=0)
    white = rng.standard_normal((frames, width)) * VIDEO_WHITE_NORM
    background = (mean + drift * VIDEO_DRIFT_NORM + white) * scale
    return (background + SIGNAL_SCALE * (signal @ self.video_projection)).astype(np.float32)

  def decode_video(self, frames: np.ndarray) -> np.ndarray:
    """[F, C] code estimates of stored frames (least squares through the projection)."""
    return np.asarray(frames, np.float64) @ self._video_inverse

  def decode_text(self, vector: np.ndarray) -> np.ndarray:
    """[C] code estimate of a sentence vector ([Dq]) or of the last token of a token array ([T, Dq])."""
    vector = np.asarray(vector, np.float64)
    return (vector[-1] if vector.ndim == 2 else vector) @ self._text_inverse


# ----------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plant:
  """One code on frames [first, last) of a video, compensated on the other frames so its video mean is zero."""
  cap_id: str
  first: int
  last: int
  amplitude: float
  distractor: bool


@dataclasses.dataclass
class VideoPlan:
  vid: str
  num_frames: int
  plants: List[Plant]


def video_num_frames(captions: Sequence[prvr.Caption], frame_sec: float = FRAME_SEC) -> int:
  """ceil(duration / frame_sec), at least 2; the duration is the largest known, else the last window end."""
  durations = [c.duration for c in captions if c.duration is not None and math.isfinite(c.duration)
               and c.duration > 0]
  if durations:
    seconds = max(durations)
  else:
    ends = [max(w) for c in captions for w in c.windows if all(math.isfinite(x) for x in w)]
    seconds = max(ends) if ends else DEFAULT_DURATION
  return max(2, int(math.ceil(seconds / frame_sec - 1e-9)))


def window_frames(window: Tuple[float, float], num_frames: int, frame_sec: float = FRAME_SEC) -> Tuple[int, int]:
  """[first, last) frames of a window in seconds, clipped to the video; a reversed window is read as sorted."""
  start, end = sorted(window)
  first = min(max(0, int(math.floor(start / frame_sec))), num_frames - 1)
  last = min(num_frames, max(first + 1, int(math.ceil(end / frame_sec - 1e-9))))
  return first, last


def true_span(caption: prvr.Caption, num_frames: int, seed: int,
              frame_sec: float = FRAME_SEC) -> Tuple[int, int]:
  """The frames [first, last) carrying the caption's code: inside ONE of its windows (picked by the seed).

  The span is at most MAX_SPAN_FRACTION of the video (at least 1 frame), placed at random inside the window;
  a caption without a usable window gets such a span anywhere in the video.
  """
  rng = stable_rng(seed, 'prvr-span', caption.cap_id)
  windows = [w for w in caption.windows if all(math.isfinite(x) for x in w)]
  if windows:
    first, last = window_frames(windows[int(rng.integers(len(windows)))], num_frames, frame_sec)
  else:
    first, last = 0, num_frames
  length = max(1, min(last - first, int(MAX_SPAN_FRACTION * num_frames)))
  start = first + int(rng.integers(last - first - length + 1))
  return start, start + length


def plan_videos(collections: Mapping[str, prvr.PrvrCollection], seed: int = 0,
                frame_sec: float = FRAME_SEC) -> Dict[str, VideoPlan]:
  """Every video's plants, from all splits at once (a video named by two splits is one video).

  True spans: one per caption of the video (`true_span`). Distractors: per true span of n frames,
  NUM_DISTRACTORS spans of round(n / DISTRACTOR_PEAK^2) frames at amplitude DISTRACTOR_PEAK, carrying the codes of
  other captions of the same split (never one of this video's), placed off the true spans where they fit.
  """
  by_vid: Dict[str, Dict[str, prvr.Caption]] = {}
  split_of_vid: Dict[str, str] = {}
  pools: Dict[str, List[str]] = {}
  for split in sorted(collections):
    coll = collections[split]
    pools.setdefault(split, [])
    for caption in coll.captions:
      by_vid.setdefault(caption.vid, {}).setdefault(caption.cap_id, caption)
      split_of_vid.setdefault(caption.vid, split)
      pools[split].append(caption.cap_id)
  pools = {s: sorted(set(p)) for s, p in pools.items()}
  plans = {}
  for vid in sorted(by_vid):
    captions = [by_vid[vid][k] for k in sorted(by_vid[vid])]
    frames = video_num_frames(captions, frame_sec)
    plants = []
    occupied = np.zeros(frames, bool)
    for caption in captions:
      first, last = true_span(caption, frames, seed, frame_sec)
      plants.append(Plant(caption.cap_id, first, last, 1.0, False))
      occupied[first:last] = True
    rng = stable_rng(seed, 'prvr-distractors', vid)
    own = set(by_vid[vid])
    pool = pools[split_of_vid[vid]]
    if len(pool) > len(own):
      for true in list(plants):
        length = true.last - true.first
        for _ in range(NUM_DISTRACTORS):
          other = pool[int(rng.integers(len(pool)))]
          while other in own:
            other = pool[int(rng.integers(len(pool)))]
          busy = np.concatenate([[0], np.cumsum(occupied)])
          free = np.flatnonzero(busy[length:] - busy[:-length] == 0) if length <= frames else np.zeros(0, int)
          start = int(free[int(rng.integers(len(free)))]) if len(free) else int(rng.integers(frames - length + 1))
          plants.append(Plant(other, start, start + length, DISTRACTOR_PEAK, True))
    plans[vid] = VideoPlan(vid, frames, plants)
  return plans


def video_signal(model: PlantedPrvrModel, plan: VideoPlan, codes: Mapping[str, np.ndarray]) -> np.ndarray:
  """[F, C] codes per frame: each plant adds amplitude * code on its span and removes the same total from the
  other frames (spread evenly), so every plant has zero sum over the video's frames."""
  signal = np.zeros((plan.num_frames, model.dims.code))
  for p in plan.plants:
    n = p.last - p.first
    code = p.amplitude * codes[p.cap_id]
    signal[p.first:p.last] += code
    if n < plan.num_frames:
      compensation = code * (n / (plan.num_frames - n))
      signal[:p.first] -= compensation
      signal[p.last:] -= compensation
  return signal


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlantedPrvrSummary:
  """What `write_planted_prvr` wrote."""
  collection_dir: str
  num_videos: int
  num_captions: Dict[str, int]
  num_true_spans: int
  num_distractor_spans: int
  video_path: str
  text_path: str


def write_planted_prvr(collections: Mapping[str, prvr.PrvrCollection], out_root, name: str, *, seed: int = 0,
                       dims: str = 'tiny', frame_sec: float = FRAME_SEC, video_layout: str = 'hdf5',
                       text_kind: str = 'sentence', visual_feature: Optional[str] = None) -> PlantedPrvrSummary:
  """Writes a planted PRVR collection in the MS-SL / AMDNet layout under `{out_root}/{name}/`.

  Files: `TextData/{name}{split}.caption.txt` per split; video frames as the AMDNet hdf5
  (`FeatureData/new_clip_vit_32_{name}_vid_features.hdf5`, plus `FeatureData/{visual_feature}/video2frames.txt`
  that the AMDNet builder opens) or as a BigFile (`FeatureData/{visual_feature}/`); caption features as
  `TextData/clip_ViT_B_32_{name}_query_feat.hdf5` (sentence, [Dq]) or `roberta_{name}_query_feat.hdf5` (tokens,
  [T, Dq]); `planted_prvr.json` (the generator settings) and `planted_prvr_spans.jsonl` (every plant).

  Args:
    collections: split -> collection (captions with their windows and durations).
    out_root, name: where, and the collection name ('charades').
    seed: the one seed of codes, projections, backgrounds, spans and distractors.
    dims: 'tiny' (32-d, tests) or 'real' (512-d video and text, as the AMDNet release).
    frame_sec: seconds per stored frame.
    video_layout: 'hdf5' or 'bigfile'.
    text_kind: 'sentence' or 'tokens'.
    visual_feature: the FeatureData subdirectory (default: the original config's for `name`).
  """
  if video_layout not in ('hdf5', 'bigfile'):
    raise ValueError(f"unknown video_layout {video_layout!r} (expected 'hdf5' or 'bigfile')")
  if text_kind not in ('sentence', 'tokens'):
    raise ValueError(f"unknown text_kind {text_kind!r} (expected 'sentence' or 'tokens')")
  if not frame_sec > 0:
    raise ValueError(f'frame_sec must be > 0, got {frame_sec}')
  model = PlantedPrvrModel(seed, dims)
  visual_feature = visual_feature or VISUAL_FEATURE.get(name, 'clip_vit_32')
  base = os.path.join(os.fspath(out_root), name)
  feature_dir, text_dir = os.path.join(base, 'FeatureData'), os.path.join(base, 'TextData')
  os.makedirs(os.path.join(feature_dir, visual_feature), exist_ok=True)
  os.makedirs(text_dir, exist_ok=True)
  for split, coll in collections.items():
    prvr.write_caption_file(coll, os.path.join(text_dir, prvr.CAPTION_FILE.format(collection=name, split=split)))

  captions: Dict[str, prvr.Caption] = {}
  for split in sorted(collections):
    for c in collections[split].captions:
      captions.setdefault(c.cap_id, c)
  codes = {k: model.caption_code(k, c.text) for k, c in captions.items()}
  plans = plan_videos(collections, seed, frame_sec)
  videos = {vid: model.video_frames(vid, video_signal(model, plan, codes)) for vid, plan in plans.items()}
  if video_layout == 'hdf5':
    video_path = os.path.join(feature_dir, prvr.AMDNET_VIDEO_FILE.format(collection=name))
    prvr.write_hdf5(video_path, videos)
    with open(os.path.join(feature_dir, visual_feature, prvr.VIDEO2FRAMES_FILE), 'w', encoding='utf-8') as f:
      f.write(repr({vid: [f'{vid}_{k}' for k in range(len(x))] for vid, x in videos.items()}))
  else:
    video_path = os.path.join(feature_dir, visual_feature)
    prvr.write_bigfile(video_path, videos)
  text_file = prvr.AMDNET_TEXT_FILE if text_kind == 'sentence' else prvr.MSSL_TEXT_FILE
  text_path = os.path.join(text_dir, text_file.format(collection=name))
  encode = model.text_vector if text_kind == 'sentence' else model.text_tokens
  prvr.write_hdf5(text_path, {k: encode(captions[k]) for k in sorted(captions)})

  with open(os.path.join(base, SPANS_FILE), 'w', encoding='utf-8') as f:
    for vid in sorted(plans):
      for p in plans[vid].plants:
        f.write(json.dumps({'vid': vid, 'cap_id': p.cap_id, 'first_frame': p.first, 'last_frame': p.last,
                            'amplitude': p.amplitude, 'distractor': p.distractor}) + '\n')
  num_true = sum(not p.distractor for plan in plans.values() for p in plan.plants)
  num_distractors = sum(p.distractor for plan in plans.values() for p in plan.plants)
  meta = {'generator': 'amr_jax.data.planted_prvr', 'version': GENERATOR_VERSION, 'seed': int(seed), 'dims': dims,
          'video_dim': model.dims.video, 'text_dim': model.dims.text, 'code_dim': model.dims.code,
          'frame_sec': frame_sec, 'video_layout': video_layout, 'text_kind': text_kind,
          'visual_feature': visual_feature, 'splits': {s: len(c) for s, c in sorted(collections.items())},
          'num_videos': len(plans), 'num_true_spans': num_true, 'num_distractor_spans': num_distractors}
  with open(os.path.join(base, META_FILE), 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write('\n')
  return PlantedPrvrSummary(base, len(plans), {s: len(c) for s, c in collections.items()}, num_true,
                            num_distractors, video_path, text_path)


def dataset_collections(dataset: str, annotations_root: str = os.path.join('data', 'annotations'),
                        limit: Optional[int] = None) -> Dict[str, prvr.PrvrCollection]:
  """The splits of a shipped dataset as PRVR collections ('charades': train/val/test, val = test; 'qvh').

  Charades-STA has no val split: val is the test split (the AMDNet builder needs a val caption file).
  `limit` keeps the first N captions of each split (small stores for tests and demos).
  """
  if dataset == 'charades':
    directory = os.path.join(annotations_root, 'charades-sta')
    train = prvr.charades_sta_collection('train', directory)
    test = prvr.charades_sta_collection('test', directory)
    out = {'train': train, 'val': test, 'test': test}
  elif dataset == 'qvh':
    directory = os.path.join(annotations_root, 'qvhighlights')
    out = {s: prvr.qvh_collection(s, directory) for s in ('train', 'val', 'test')}
  else:
    raise ValueError(f"unknown dataset {dataset!r} (expected 'charades' or 'qvh')")
  if limit is not None:
    out = {s: c.subset(range(min(limit, len(c)))) for s, c in out.items()}
  return out


# ----------------------------------------------------------------------------------------------------
# Probes: what a caption-and-moment reader, a clip-mean reader and a moment-blind energy reader can do
# ----------------------------------------------------------------------------------------------------
def _decoded(model: PlantedPrvrModel, store: prvr.PrvrStore, collection: prvr.PrvrCollection,
             text_of: Optional[Sequence[int]]):
  texts = np.stack([model.decode_text(store.text(collection.captions[j if text_of is None else text_of[j]].cap_id))
                    for j in range(len(collection))])                 # [Nq, C]
  videos = [model.decode_video(store.video(vid)) for vid in collection.video_ids]   # each [F, C]
  return _unit_rows(texts), videos


def oracle_scores(model: PlantedPrvrModel, store: prvr.PrvrStore, collection: prvr.PrvrCollection,
                  text_of: Optional[Sequence[int]] = None) -> np.ndarray:
  """[Nq, Nv] max over frames of cos(decoded frame minus the video's mean frame, decoded caption).

  This reads the caption and the moment (the best frame). `text_of[i]` scores caption i with caption
  text_of[i]'s features (the shuffled-caption control).
  """
  texts, videos = _decoded(model, store, collection, text_of)
  cols = [(_unit_rows(v - v.mean(axis=0, keepdims=True)) @ texts.T).max(axis=0) for v in videos]
  return np.stack(cols, axis=1)


def clip_mean_scores(model: PlantedPrvrModel, store: prvr.PrvrStore, collection: prvr.PrvrCollection,
                     text_of: Optional[Sequence[int]] = None) -> np.ndarray:
  """[Nq, Nv] cos(decoded mean frame, decoded caption): the best a clip-averaged video vector can do linearly."""
  texts, videos = _decoded(model, store, collection, text_of)
  means = _unit_rows(np.stack([v.mean(axis=0) for v in videos]))
  return texts @ means.T


def energy_scores(model: PlantedPrvrModel, store: prvr.PrvrStore, collection: prvr.PrvrCollection,
                  text_of: Optional[Sequence[int]] = None) -> np.ndarray:
  """[Nq, Nv] mean over frames of (centred decoded frame . caption)^2: knows the caption, ignores where it is."""
  texts, videos = _decoded(model, store, collection, text_of)
  cols = [((v - v.mean(axis=0, keepdims=True)) @ texts.T).__pow__(2).mean(axis=0) for v in videos]
  return np.stack(cols, axis=1)


def shuffled_caption_map(collection: prvr.PrvrCollection, seed: int = 0) -> np.ndarray:
  """[Nq] another caption per caption, of another video and another text (the shuffled-caption control)."""
  n = len(collection)
  perm = stable_rng(seed, 'prvr-shuffle').permutation(n)
  out = np.zeros(n, np.int64)
  for i in range(n):
    j = int(perm[i])
    for _ in range(n):
      if (collection.caption_video[j] != collection.caption_video[i]
          and collection.captions[j].text != collection.captions[i].text):
        break
      j = (j + 1) % n
    out[i] = j
  return out


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m amr_jax.data.planted_prvr --dataset=charades --out=DIR [--dims=tiny|real] [--seed=N]`."""
  parser = argparse.ArgumentParser(prog='planted_prvr', description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', choices=('charades', 'qvh'), required=True)
  parser.add_argument('--out', required=True, help='data root; the collection goes to OUT/DATASET/')
  parser.add_argument('--dims', choices=tuple(DIMS), default='tiny')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--frame_sec', type=float, default=FRAME_SEC)
  parser.add_argument('--video_layout', choices=('hdf5', 'bigfile'), default='hdf5')
  parser.add_argument('--text_kind', choices=('sentence', 'tokens'), default='sentence')
  parser.add_argument('--limit', type=int, default=None, help='first N captions of each split')
  parser.add_argument('--annotations', default=os.path.join('data', 'annotations'))
  args = parser.parse_args(argv)
  try:
    collections = dataset_collections(args.dataset, args.annotations, args.limit)
    summary = write_planted_prvr(collections, args.out, args.dataset, seed=args.seed, dims=args.dims,
                                 frame_sec=args.frame_sec, video_layout=args.video_layout,
                                 text_kind=args.text_kind)
  except (OSError, ValueError) as e:
    print(f'planted_prvr: {e}', file=sys.stderr)
    return 1
  print(f'wrote {summary.num_videos} videos, captions {summary.num_captions}, {summary.num_true_spans} true and '
        f'{summary.num_distractor_spans} distractor spans (dims={args.dims}, seed={args.seed}) to '
        f'{summary.collection_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
