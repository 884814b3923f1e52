"""Planted weak-MR store (the embedded default data of the weak-MR methods), keyed by real Charades-STA ids.

Each query's content words are planted inside its annotated moment (clips carry a fixed projection of the sum of
their planted word vectors), the video's other queries at their own moments, other videos' queries as distractor
spans elsewhere, a weak scene code (the video's own sentences, on every clip, no timing), over background +
noise: reconstructing a query's masked words needs its moment.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from amr_jax.data import vocab as vocab_lib
from amr_jax.data.planted import save_npy, stable_rng
from amr_jax.data.records import MomentRecord
from amr_jax.data.weak_mr import WeakFeatureStore

try:                                      # optional: the one-file (hdf5) layout
  import h5py                             # pylint: disable=g-import-not-at-top
except ImportError:                       # pragma: no cover - depends on the environment
  h5py = None

META_FILE = 'planted_weak.json'
FEATURES_DIR = 'features'            # per-video {vid}.npy, [T, Df] float32
HDF5_FILE = 'features.hdf5'          # with fmt='hdf5': one file, f[vid] = [T, Df] (CPL's Charades layout)
WORD_VECTORS_FILE = 'word_vectors.npz'
SHUFFLED_FILE = 'shuffled_queries.json'
GENERATOR_VERSION = 2

CLIP_SEC = 0.5                       # seconds per raw clip (T = ceil(duration / CLIP_SEC))
BACKGROUND_NORM = 0.5                # per-video constant offset
DRIFT_NORM = 0.5                     # slowly varying AR(1) background
DRIFT_RHO = 0.9                      # AR(1) coefficient per raw clip
WHITE_NORM = 0.3                     # per-clip white noise
SIGNAL_NORM = 1.0                    # norm of a planted query code
NUM_DISTRACTORS = 2                  # distractor spans per true window (where free clips allow)
CONTEXT_NORM = 0.5                   # every clip: the video's own sentences' mean code (its scene), no timing
DIMS = {'tiny': (64, 32), 'real': (1024, 300)}   # (frame_dim, word_dim): 'real' = I3D width, GloVe width


def planted_words(sentence: str) -> List[str]:
  """The words a query plants: its lowercased content words (regex tokeniser + `lexicon_weight`, so the store
  does not depend on nltk being installed)."""
  tokens = vocab_lib.regex_word_tokenize(sentence)
  return [t.lower() for t in tokens if vocab_lib.lexicon_weight(t) == vocab_lib.CONTENT_WEIGHT]


class PlantedWeakModel:
  """The generative model of a planted weak-MR store: word vectors, the frame projection, decoding."""

  def __init__(self, seed: int = 0, frame_dim: int = 64, word_dim: int = 32, word_vector_seed: int = 0,
               word_weights: Optional[Mapping[str, float]] = None):
    if frame_dim < word_dim:
      raise ValueError(f'frame_dim {frame_dim} must be >= word_dim {word_dim} (the projection must be invertible)')
    self.seed = int(seed)
    self.frame_dim = int(frame_dim)
    self.word_dim = int(word_dim)
    self.word_vector_seed = int(word_vector_seed)
    self.word_weights = dict(word_weights or {})   # word -> idf weight in the codes (1 when absent)
    gaussian = stable_rng(self.seed, 'weak_projection', frame_dim, word_dim).standard_normal((frame_dim, word_dim))
    q, _ = np.linalg.qr(gaussian)
    self.projection = q.T                    # [Dw, Df], orthonormal rows: codes keep their norm in frame space
    self._codes: Dict[str, np.ndarray] = {}

  @classmethod
  def from_store(cls, root: str) -> 'PlantedWeakModel':
    with open(os.path.join(root, META_FILE), encoding='utf-8') as f:
      meta = json.load(f)
    return cls(meta['seed'], meta['frame_dim'], meta['word_dim'], meta['word_vector_seed'], meta['word_weights'])

  def word_vector(self, word: str) -> np.ndarray:
    """The planted vector of a word: `vocab.planted_word_vector`, i.e. what text.word_vectors='planted' gives."""
    return vocab_lib.planted_word_vector(word, self.word_dim, self.word_vector_seed)

  def query_code(self, sentence: str) -> np.ndarray:
    """[Dw] unit code of a sentence: the normalised idf-weighted sum of its planted words' vectors (0 when it has
    none); the idf weight keeps words of almost every query ('person') from marking every planted span."""
    if sentence not in self._codes:
      code = np.zeros(self.word_dim)
      for word in planted_words(sentence):
        code += self.word_weights.get(word, 1.0) * self.word_vector(word)
      norm = np.linalg.norm(code)
      self._codes[sentence] = code / norm if norm > 0 else code
    return self._codes[sentence]

  def video_features(self, vid: str, signal: np.ndarray) -> np.ndarray:
    """float32 [T, Df]: background + AR(1) drift + white noise + signal [T, Dw] @ projection."""
    length = len(signal)
    rng = stable_rng(self.seed, 'weak_video', vid)
    df = self.frame_dim
    mean = rng.standard_normal(df) * (BACKGROUND_NORM / math.sqrt(df))
    innovations = rng.standard_normal((length, df)) * (DRIFT_NORM * math.sqrt(1 - DRIFT_RHO ** 2) / math.sqrt(df))
    drift = np.zeros((length, df))
    state = rng.standard_normal(df) * (DRIFT_NORM / math.sqrt(df))
    for t in range(length):
      state = DRIFT_RHO * state + innovations[t]
      drift[t] = state
    white = rng.standard_normal((length, df)) * (WHITE_NORM / math.sqrt(df))
    return (mean + drift + white + signal @ self.projection).astype(np.float32)

  def decode(self, frames: np.ndarray) -> np.ndarray:
    """[T, Dw] code estimates of [T, Df] frames (least squares; the projection has orthonormal rows)."""
    return np.asarray(frames, np.float64) @ self.projection.T


# --- planning ------------------------------------------------------------------------------------------------


def num_raw_clips(records: Sequence[MomentRecord], clip_sec: float = CLIP_SEC) -> int:
  """Raw clips of a planted video: ceil(duration / clip_sec) (the max window end when no duration is known)."""
  durations = [r.duration for r in records if r.duration is not None and math.isfinite(r.duration)]
  seconds = max(durations) if durations else max((e for r in records for _, e in r.windows if math.isfinite(e)),
                                                 default=clip_sec)
  return max(1, int(math.ceil(seconds / clip_sec - 1e-9)))


def window_clips(window: Tuple[float, float], length: int, clip_sec: float = CLIP_SEC) -> Tuple[int, int]:
  """[first, last) raw clips of a window in seconds, clipped to [0, length); empty for bad windows."""
  start, end = window
  if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
    return 0, 0
  first = max(0, int(math.floor(start / clip_sec)))
  last = min(length, int(math.ceil(end / clip_sec - 1e-9)))
  return first, max(first, last)


@dataclasses.dataclass(frozen=True)
class WeakPlant:
  """One span of one sentence's code in one video."""
  sentence: str
  first_clip: int
  last_clip: int
  distractor: bool


def plan_weak_video(vid: str, records: Sequence[MomentRecord], length: int, pool: Sequence[str], seed: int,
                    clip_sec: float = CLIP_SEC) -> List[WeakPlant]:
  """The spans of one video: every distinct (sentence, window) of its records at its window, and per true window
  NUM_DISTRACTORS spans of the same length on clips no true window covers, each carrying a sentence of another
  video (from `pool`), placed at random where they fit."""
  rng = stable_rng(seed, 'weak_distractors', vid)
  own = {r.query for r in records}
  plants, seen = [], set()
  occupied = np.zeros(length, bool)
  for r in records:
    for window in r.windows:
      first, last = window_clips(window, length, clip_sec)
      if last <= first or (r.query, first, last) in seen:
        continue
      seen.add((r.query, first, last))
      plants.append(WeakPlant(r.query, first, last, False))
      occupied[first:last] = True
  for plant in list(plants):
    span = plant.last_clip - plant.first_clip
    for _ in range(NUM_DISTRACTORS):
      free = np.concatenate([[0], np.cumsum(occupied)])
      starts = np.flatnonzero(free[span:] - free[:-span] == 0) if span <= length else np.zeros(0, int)
      if not len(starts) or not pool:
        break
      sentence = pool[int(rng.integers(len(pool)))]
      for _ in range(8):
        if sentence not in own:
          break
        sentence = pool[int(rng.integers(len(pool)))]
      if sentence in own:
        break
      start = int(starts[int(rng.integers(len(starts)))])
      plants.append(WeakPlant(sentence, start, start + span, True))
      occupied[start:start + span] = True
  return plants


def scene_code(model: PlantedWeakModel, sentences: Sequence[str]) -> np.ndarray:
  """[Dw] unit code of a video's scene: the normalised sum of its distinct sentences' codes. Added to every clip
  (CONTEXT_NORM), it tells a reader which words the video's queries use but not where: a wide read already pays,
  so reading the video is learnt first; a narrow read at the moment pays more, so the moment is learnt next."""
  code = np.zeros(model.word_dim)
  for sentence in sorted(set(sentences)):
    code += model.query_code(sentence)
  norm = np.linalg.norm(code)
  return code / norm if norm > 0 else code


def idf_weights(sentences: Sequence[str]) -> Dict[str, float]:
  """word -> log(1 + N / df): N distinct sentences, df = those that plant the word (rounded to 6 digits)."""
  distinct = sorted(set(sentences))
  df = collections.Counter(w for s in distinct for w in set(planted_words(s)))
  return {w: round(math.log(1.0 + len(distinct) / n), 6) for w, n in sorted(df.items())}


def _group(records: Iterable[MomentRecord]) -> Dict[str, List[MomentRecord]]:
  by_vid: Dict[str, List[MomentRecord]] = collections.OrderedDict()
  for r in records:
    by_vid.setdefault(r.vid, []).append(r)
  return by_vid


# --- the shuffled-query control ------------------------------------------------------------------------------


def shuffled_query_map(records: Sequence[MomentRecord], seed: int = 0) -> Dict[int, int]:
  """qid -> the qid of another record with a different sentence (a seeded permutation, stepped past equal
  sentences): train with it to get the query-blind control."""
  qids = sorted({r.qid for r in records})
  sentence = {r.qid: r.query for r in records}
  perm = stable_rng(seed, 'shuffle_weak_queries').permutation(len(qids))
  out = {}
  for i, qid in enumerate(qids):
    j = int(perm[i])
    for _ in range(len(qids)):
      if sentence[qids[j]] != sentence[qid]:
        break
      j = (j + 1) % len(qids)
    out[qid] = qids[j]
  return out


# --- writing -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PlantedWeakSummary:
  """What `write_planted_weak_store` wrote."""
  out_dir: str
  feature_path: str
  word_vectors_path: str
  shuffled_path: str
  num_videos: int
  num_queries: int
  num_true_spans: int
  num_distractor_spans: int


def write_planted_weak_store(records: Iterable[MomentRecord], out_dir: str, *, seed: int = 0, dims: str = 'tiny',
                             clip_sec: float = CLIP_SEC, word_vector_seed: int = 0, fmt: str = 'npy',
                             frame_dim: Optional[int] = None, word_dim: Optional[int] = None) -> PlantedWeakSummary:
  """Writes a planted weak-MR store for every vid of `records` (all splits at once: distractors and the
  shuffled map are drawn over all of them).

  Layout: `features/{vid}.npy` (fmt='npy') or `features.hdf5` (fmt='hdf5', f[vid]), `word_vectors.npz` (every
  planted and every tokenised word: a GloVe-like file for text.word_vectors), `shuffled_queries.json`
  ({qid: qid}) and `planted_weak.json` (generator settings). Deterministic in (records, seed, dims, clip_sec).

  Args:
    records: weak-MR samples with windows (durations from the jsonl when known; else the max window end).
    out_dir: created if needed; files are overwritten.
    seed: seed of projection, backgrounds, distractors and the shuffled map.
    dims: 'tiny' (64-d frames, 32-d words) or 'real' (1024, 300); frame_dim / word_dim override.
    clip_sec: seconds per raw clip.
    word_vector_seed: seed of the planted word vectors (= text.word_vector_seed).
    fmt: 'npy' or 'hdf5'.
  """
  if dims not in DIMS:
    raise ValueError(f'unknown dims {dims!r} (known: {", ".join(DIMS)})')
  if fmt not in ('npy', 'hdf5'):
    raise ValueError(f"fmt must be 'npy' or 'hdf5', got {fmt!r}")
  records = list(records)
  qids = collections.Counter(r.qid for r in records)
  repeated = [q for q, n in qids.items() if n > 1]
  if repeated:
    raise ValueError(f'qid={repeated[0]} field=qid: {len(repeated)} qid(s) repeat across the records; the '
                     'shuffled-query map needs unique qids (load_weak_annotations(qid_offset=...))')
  frame_dim = frame_dim or DIMS[dims][0]
  word_dim = word_dim or DIMS[dims][1]
  pool = sorted({r.query for r in records})
  weights = idf_weights(pool)
  model = PlantedWeakModel(seed, frame_dim, word_dim, word_vector_seed, weights)
  os.makedirs(out_dir, exist_ok=True)
  by_vid = _group(records)
  num_true = num_distractors = 0
  features: Dict[str, np.ndarray] = {}
  feature_dir = os.path.join(out_dir, FEATURES_DIR)
  if fmt == 'npy':
    os.makedirs(feature_dir, exist_ok=True)
  h5 = None
  if fmt == 'hdf5':
    if h5py is None:
      raise ValueError("fmt='hdf5' needs the h5py package")
    h5 = h5py.File(os.path.join(out_dir, HDF5_FILE), 'w')
  try:
    for vid in sorted(by_vid):
      vid_records = sorted(by_vid[vid], key=lambda r: (r.qid, r.line))
      length = num_raw_clips(vid_records, clip_sec)
      signal = np.zeros((length, word_dim))
      signal += CONTEXT_NORM * scene_code(model, [r.query for r in vid_records])
      for plant in plan_weak_video(vid, vid_records, length, pool, seed, clip_sec):
        signal[plant.first_clip:plant.last_clip] += SIGNAL_NORM * model.query_code(plant.sentence)
        num_distractors += plant.distractor
        num_true += not plant.distractor
      frames = model.video_features(vid, signal)
      if h5 is not None:
        h5.create_dataset(vid, data=frames)
      else:
        save_npy(os.path.join(feature_dir, f'{vid}.npy'), frames)
      features[vid] = frames
  finally:
    if h5 is not None:
      h5.close()
  words = sorted({t.lower() for s in pool for t in vocab_lib.regex_word_tokenize(s)} |
                 {w for s in pool for w in planted_words(s)})
  vectors_path = os.path.join(out_dir, WORD_VECTORS_FILE)
  vocab_lib.save_word_vectors(vectors_path, words, vocab_lib.planted_word_vectors(words, word_dim,
                                                                                  word_vector_seed))
  shuffled_path = os.path.join(out_dir, SHUFFLED_FILE)
  with open(shuffled_path, 'w', encoding='utf-8') as f:
    json.dump({str(k): v for k, v in shuffled_query_map(records, seed).items()}, f)
  meta = {'generator': 'amr_jax.data.planted_weak', 'version': GENERATOR_VERSION, 'seed': int(seed),
          'dims': dims, 'frame_dim': frame_dim, 'word_dim': word_dim, 'word_vector_seed': int(word_vector_seed),
          'clip_sec': clip_sec, 'fmt': fmt, 'num_videos': len(by_vid), 'num_queries': len(records),
          'word_weights': weights}
  with open(os.path.join(out_dir, META_FILE), 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write('\n')
  feature_path = os.path.join(out_dir, HDF5_FILE) if fmt == 'hdf5' else feature_dir
  return PlantedWeakSummary(out_dir, feature_path, vectors_path, shuffled_path, len(by_vid), len(records),
                            num_true, num_distractors)


def load_shuffled_map(path: str) -> Dict[int, int]:
  """The {qid: qid} of `shuffled_queries.json`."""
  with open(path, encoding='utf-8') as f:
    return {int(k): int(v) for k, v in json.load(f).items()}


# --- checking that the moment is needed ----------------------------------------------------------------------


def oracle_windows(store: WeakFeatureStore, records: Sequence[MomentRecord], model: PlantedWeakModel, *,
                   clip_sec: float = CLIP_SEC, query_of: Optional[Mapping[int, int]] = None) -> np.ndarray:
  """[N, 2] seconds: the window a reader of the planted codes picks for each record.

  Decodes the raw clips, removes the video's mean code, scores each clip by its dot product with the query code
  (of `query_of[qid]`'s sentence when given: the shuffled control) and returns the run of clips around the best
  one that score at least half of it.
  """
  sentence = {r.qid: r.query for r in records}
  out = np.zeros((len(records), 2))
  for i, r in enumerate(records):
    text = sentence.get(query_of[r.qid], r.query) if query_of else r.query
    codes = model.decode(store.raw(r.vid))
    codes -= codes.mean(axis=0, keepdims=True)
    score = codes @ model.query_code(text)
    best = int(np.argmax(score))
    keep = score >= 0.5 * score[best]
    first, last = best, best + 1
    while first > 0 and keep[first - 1]:
      first -= 1
    while last < len(score) and keep[last]:
      last += 1
    end = last * clip_sec if r.duration is None else min(last * clip_sec, r.duration)
    out[i] = (first * clip_sec, end)
  return out


def prior_windows(records: Sequence[MomentRecord]) -> np.ndarray:
  """[N, 2] seconds: a query-blind and video-blind guess, the mean normalised GT window of `records` x duration."""
  norm = np.array([[r.windows[0][0] / r.duration, r.windows[0][1] / r.duration] for r in records])
  mean = norm.mean(axis=0)
  return np.array([[mean[0] * r.duration, mean[1] * r.duration] for r in records])
