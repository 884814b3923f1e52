"""Planted feature stores: synthetic video/text features, keyed by real vids/qids, where the query is needed.

Every query gets a code (normalised sum of hashed word codes); its windows carry that code in the video, and other
queries' codes are planted as distractor spans, so only the query tells the true moment apart (docs/PLANTED.md).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from amr_jax.ops import spans as spans_lib
import scipy.signal

from amr_jax.data.features import LAYOUTS, FeatureStore, l2_normalize
from amr_jax.data.records import CLIP_LEN_SEC, MomentRecord

META_FILE = "planted.json"
GENERATOR_VERSION = 1

MAX_TEXT_TOKENS = 32        # SOT + up to 30 words + EOT
VIDEO_MEAN_NORM = 0.5       # per-video constant offset (norm per stored vector)
VIDEO_DRIFT_NORM = 0.5      # slowly varying AR(1) background
VIDEO_DRIFT_RHO = 0.9       # AR(1) coefficient per 2 s clip
VIDEO_WHITE_NORM = 0.3      # per-clip white noise
TEXT_NOISE_NORM = 0.3       # per-token white noise
SIGNAL_SCALE = 1.0          # planted code norm per stored vector at strength 1
NUM_DISTRACTORS = 2         # distractor spans per true window
NO_SALIENCY_STRENGTH = 1.0  # strength inside windows of queries without saliency scores


@dataclasses.dataclass(frozen=True)
class PlantedDims:
  """Widths of a planted store; `*_layers == 0` means the rank-2 lighthouse form (L, D)."""
  slowfast: int
  clip_layers: int
  clip: int
  text_layers: int
  text: int
  code: int

  @property
  def video_vector_widths(self) -> List[int]:
    """Widths of the stored vectors of one clip, in `FeatureStore.video()` order (each normalised alone)."""
    return [self.slowfast] + [self.clip] * max(self.clip_layers, 1)

  @property
  def text_vector_widths(self) -> List[int]:
    return [self.text] * max(self.text_layers, 1)


_DIMS = {
    ("qvh", "tiny"): PlantedDims(slowfast=16, clip_layers=4, clip=8, text_layers=4, text=8, code=16),
    ("qvh", "real"): PlantedDims(slowfast=2304, clip_layers=4, clip=768, text_layers=4, text=512, code=64),
    ("lighthouse", "tiny"): PlantedDims(slowfast=16, clip_layers=0, clip=32, text_layers=0, text=32, code=16),
    ("lighthouse", "real"): PlantedDims(slowfast=2304, clip_layers=0, clip=512, text_layers=0, text=512, code=64),
}


def planted_dims(dims: str, layout: str = "qvh") -> PlantedDims:
  if (layout, dims) not in _DIMS:
    raise ValueError(f"unknown dims/layout {dims!r}/{layout!r} (dims: tiny, real; layout: qvh, lighthouse)")
  return _DIMS[(layout, dims)]


def stable_rng(*key) -> np.random.Generator:
  """A numpy Generator seeded by sha256 of the key parts (stable across runs and machines, unlike hash())."""
  digest = hashlib.sha256("\x1f".join(str(k) for k in key).encode("utf-8")).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def query_words(query: str) -> List[str]:
  """Lowercased words with punctuation removed."""
  return re.sub(r"[^\w\s]", "", query.lower()).split()


def _unit(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x)
  return x / norm if norm > 0 else x


def _column_scale(widths: Sequence[int]) -> np.ndarray:
  """[D] 1/sqrt(width of the vector each element belongs to): gives every stored vector the same norm."""
  return np.concatenate([np.full(w, 1.0 / math.sqrt(w)) for w in widths])


class PlantedModel:
  """The generative model of a planted store: word/query codes, projections, and decoding back to codes."""

  def __init__(self, seed: int = 0, dims: str = "tiny", layout: str = "qvh"):
    self.seed = int(seed)
    self.dims_name = dims
    self.layout = layout
    self.dims = planted_dims(dims, layout)
    code = self.dims.code
    self.video_scale = _column_scale(self.dims.video_vector_widths)   # [Dv]
    self.text_scale = _column_scale(self.dims.text_vector_widths)     # [Dt]
    rng = stable_rng(self.seed, "projection", layout, dims)
    self.video_projection = rng.standard_normal((code, self.video_scale.size)) * self.video_scale  # [C, Dv]
    self.text_projection = rng.standard_normal((code, self.text_scale.size)) * self.text_scale     # [C, Dt]
    self.sot_code = _unit(stable_rng(self.seed, "token", "<sot>").standard_normal(code))
    self._word_codes: Dict[str, np.ndarray] = {}
    self._query_codes: Dict[str, np.ndarray] = {}
    self._video_inverse: Optional[np.ndarray] = None
    self._text_inverse: Optional[np.ndarray] = None

  @classmethod
  def from_store(cls, root: str) -> "PlantedModel":
    """The model that wrote the planted store at `root` (from its planted.json)."""
    with open(os.path.join(root, META_FILE), encoding="utf-8") as f:
      meta = json.load(f)
    return cls(seed=meta["seed"], dims=meta["dims"], layout=meta["layout"])

  def word_code(self, word: str) -> np.ndarray:
    """[C] deterministic random unit code of one word."""
    if word not in self._word_codes:
      self._word_codes[word] = _unit(stable_rng(self.seed, "word", word).standard_normal(self.dims.code))
    return self._word_codes[word]

  def query_code(self, query: str) -> np.ndarray:
    """[C] normalised sum of the query's word codes (zero for an empty query)."""
    if query not in self._query_codes:
      code = np.zeros(self.dims.code)
      for word in query_words(query):
        code += self.word_code(word)
      self._query_codes[query] = _unit(code)
    return self._query_codes[query]

  def text_features(self, qid: int, query: str) -> np.ndarray:
    """Stored text array: [Ntok, layers, Dt] (qvh) or [Ntok, Dt] (lighthouse), Ntok = words + 2 capped at 32."""
    words = query_words(query)[:MAX_TEXT_TOKENS - 2]
    codes = [self.sot_code] + [self.word_code(w) for w in words] + [self.query_code(query)]
    codes = np.stack(codes)                                   # [Ntok, C]
    rng = stable_rng(self.seed, "text", qid)
    noise = rng.standard_normal((len(codes), self.text_scale.size)) * self.text_scale * TEXT_NOISE_NORM
    text = codes @ self.text_projection + noise                # [Ntok, Dt]
    if self.dims.text_layers:
      text = text.reshape(len(codes), self.dims.text_layers, self.dims.text)
    return text.astype(np.float32)

  def video_features(self, vid: str, signal: np.ndarray) -> Dict[str, np.ndarray]:
    """Stored video arrays for one video.

    Args:
      vid: the video id (seeds the background).
      signal: [L, C] planted codes times strength, per clip.

    Returns:
      {'slowfast': [L, Dsf], 'clip': [L, layers, Dc] (qvh) or [L, Dc] (lighthouse)}, float32.
    """
    length, width = signal.shape[0], self.video_scale.size
    rng = stable_rng(self.seed, "video", vid)
    mean = rng.standard_normal(width) * VIDEO_MEAN_NORM
    innovations = rng.standard_normal((length, width))
    # AR(1): drift[0] = e[0], drift[t] = rho * drift[t-1] + sqrt(1 - rho^2) * e[t] (unit variance throughout).
    inputs = innovations * math.sqrt(1.0 - VIDEO_DRIFT_RHO ** 2)
    inputs[0] = innovations[0]
    drift = scipy.signal.lfilter([1.0], [1.0, -VIDEO_DRIFT_RHO], inputs, axis=0)   # [L, Dv]
    white = rng.standard_normal((length, width)) * VIDEO_WHITE_NORM
    background = (mean + drift * VIDEO_DRIFT_NORM + white) * self.video_scale     # [L, Dv]
    video = background + SIGNAL_SCALE * (signal @ self.video_projection)          # [L, Dv]
    slowfast = video[:, :self.dims.slowfast]
    clip = video[:, self.dims.slowfast:]
    if self.dims.clip_layers:
      clip = clip.reshape(length, self.dims.clip_layers, self.dims.clip)
    return {"slowfast": slowfast.astype(np.float32), "clip": clip.astype(np.float32)}

  def decode_video(self, video: np.ndarray) -> np.ndarray:
    """[L, C] code estimates from `FeatureStore.video()` rows [L, Dv] (least squares through the projection)."""
    if self._video_inverse is None:
      self._video_inverse = np.linalg.pinv(self.video_projection)     # [Dv, C]
    return video @ self._video_inverse

  def decode_text(self, text: np.ndarray) -> np.ndarray:
    """[C] code estimate of the sentence (EOT = last token) from `FeatureStore.text()` rows [Ntok, Dt]."""
    if self._text_inverse is None:
      self._text_inverse = np.linalg.pinv(self.text_projection)       # [Dt, C]
    return text[-1] @ self._text_inverse


# --- planning: which codes go where --------------------------------------------------------------------------


def video_length(records: Sequence[MomentRecord], max_v_l: int) -> int:
  """Clips of a planted video: ceil(duration / 2 s), capped at max_v_l; from the windows when no duration."""
  durations = [r.duration for r in records if r.duration is not None and math.isfinite(r.duration)]
  if durations:
    seconds = max(durations)
  else:
    ends = [e for r in records for _, e in r.windows if math.isfinite(e)]
    seconds = max(ends, default=CLIP_LEN_SEC)
  return int(max(1, min(math.ceil(seconds / CLIP_LEN_SEC - 1e-9), max_v_l)))


def window_clips(window: Tuple[float, float], length: int) -> Tuple[int, int]:
  """[first, last) clip range covered by a window in seconds, clipped to [0, length)."""
  start, end = window
  if not (math.isfinite(start) and math.isfinite(end)):
    return 0, 0
  first = max(0, int(math.floor(start / CLIP_LEN_SEC)))
  last = min(length, int(math.ceil(end / CLIP_LEN_SEC - 1e-9)))
  return first, max(first, last)


def window_strengths(record: MomentRecord, first: int, last: int) -> np.ndarray:
  """[last - first] planting strength per clip: 0.5 + (sum of the 3 saliency scores) / 12, else constant."""
  strengths = np.full(last - first, NO_SALIENCY_STRENGTH)
  if record.has_saliency:
    by_clip = {c: s for c, s in zip(record.relevant_clip_ids, record.saliency_scores)}
    for i, clip in enumerate(range(first, last)):
      if clip in by_clip:
        strengths[i] = 0.5 + sum(by_clip[clip]) / 12.0
  return strengths


@dataclasses.dataclass(frozen=True)
class Plant:
  """One span of one code in one video."""
  query: str
  first_clip: int
  strengths: np.ndarray     # [n] per clip
  distractor: bool


def _free_starts(occupied: np.ndarray, span: int) -> np.ndarray:
  """Start clips where `span` consecutive free clips fit."""
  if span <= 0 or span > len(occupied):
    return np.zeros(0, dtype=int)
  busy = np.concatenate([[0], np.cumsum(occupied.astype(int))])
  counts = busy[span:] - busy[:-span]        # occupied clips in [s, s+span)
  return np.flatnonzero(counts == 0)


def _longest_free_run(occupied: np.ndarray) -> int:
  best = run = 0
  for busy in occupied:
    run = 0 if busy else run + 1
    best = max(best, run)
  return best


def plan_video(vid: str, records: Sequence[MomentRecord], length: int, pool: Sequence[str],
               seed: int, attempts: int = 16) -> List[Plant]:
  """The true and distractor spans of one video.

  Every window of every query of `vid` is planted with its query. Each true window asks for NUM_DISTRACTORS spans
  with the same length and strength profile, carrying the codes of other queries (from `pool`, never one of this
  video's own queries), on clips that no true window or other distractor covers. Placement is random; of
  `attempts` random placements the one fitting the most full-length distractors is kept. A true window left
  without any distractor (no gap long enough) gets one cut to the longest free gap, if any clip is free.
  """
  rng = stable_rng(seed, "distractors", vid)
  own_queries = {r.query for r in records}
  others = [q for q in pool if q not in own_queries] if len(pool) <= 256 else None
  plants: List[Plant] = []
  occupied = np.zeros(length, dtype=bool)
  requests = []                          # (true span index, query, strengths)
  for record in records:
    for window in record.windows:
      first, last = window_clips(window, length)
      if last <= first:
        continue
      strengths = window_strengths(record, first, last)
      plants.append(Plant(record.query, first, strengths, distractor=False))
      occupied[first:last] = True
      for _ in range(NUM_DISTRACTORS):
        if others is not None:
          if not others:
            break
          query = others[int(rng.integers(len(others)))]
        else:
          query = pool[int(rng.integers(len(pool)))]
          while query in own_queries:
            query = pool[int(rng.integers(len(pool)))]
        requests.append((len(plants) - 1, query, strengths))
  requests.sort(key=lambda req: -len(req[2]))

  best: List[Tuple[int, int]] = []       # (request index, start)
  for _ in range(attempts if requests else 0):
    taken = occupied.copy()
    placed = []
    for i, (_, _, strengths) in enumerate(requests):
      starts = _free_starts(taken, len(strengths))
      if len(starts):
        start = int(starts[int(rng.integers(len(starts)))])
        taken[start:start + len(strengths)] = True
        placed.append((i, start))
    if (len(placed), sum(len(requests[i][2]) for i, _ in placed)) > (
        len(best), sum(len(requests[i][2]) for i, _ in best)):
      best = placed
    if len(best) == len(requests):
      break
  served = set()
  for i, start in sorted(best):
    span_index, query, strengths = requests[i]
    plants.append(Plant(query, start, strengths, distractor=True))
    occupied[start:start + len(strengths)] = True
    served.add(span_index)
  for span_index, query, strengths in requests:
    if span_index in served:
      continue
    span = _longest_free_run(occupied)
    if span == 0:
      break
    starts = _free_starts(occupied, span)
    start = int(starts[int(rng.integers(len(starts)))])
    plants.append(Plant(query, start, strengths[:span], distractor=True))
    occupied[start:start + span] = True
    served.add(span_index)
  return plants


# --- writing -------------------------------------------------------------------------------------------------


def save_npy(path: str, array: np.ndarray) -> None:
  with open(path, "wb") as f:
    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
  """Like np.savez, but with fixed zip timestamps so the bytes depend only on the arrays."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
    for key, array in arrays.items():
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.external_attr = 0o644 << 16
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
      archive.writestr(info, buffer.getvalue())


def _save(path: str, array: np.ndarray, npz_keys: Tuple[str, ...]) -> None:
  if npz_keys:
    save_npz(path, {npz_keys[0]: array})
  else:
    save_npy(path, array)


@dataclasses.dataclass
class PlantedSummary:
  """What `write_planted_store` wrote."""
  out_dir: str
  num_videos: int
  num_queries: int
  num_true_spans: int
  num_distractor_spans: int
  qid_query_conflicts: List[int]


def _group_records(records: Sequence[MomentRecord]):
  """(query per qid, {vid: {qid: record}}, qids seen with two query strings); the first row of a qid wins."""
  queries: Dict[int, str] = {}
  conflicts = []
  by_vid: Dict[str, Dict[int, MomentRecord]] = collections.OrderedDict()
  for record in records:
    if record.qid in queries and queries[record.qid] != record.query:
      conflicts.append(record.qid)
    queries.setdefault(record.qid, record.query)
    by_vid.setdefault(record.vid, {}).setdefault(record.qid, record)
  return queries, by_vid, conflicts


def write_planted_store(records: Iterable[MomentRecord], out_dir: str, *, seed: int = 0, dims: str = "tiny",
                        layout: str = "qvh", max_v_l: int = 75) -> PlantedSummary:
  """Writes a planted store for every vid and qid of `records`.

  Args:
    records: annotation records (several files may be concatenated; repeated qids are written once).
    out_dir: the store root; created if needed, files are overwritten.
    seed: the one seed of codes, projections, backgrounds and distractors.
    dims: 'tiny' (small widths, for tests) or 'real' (SlowFast 2304, CLIP (4, 768), text (4, 512)).
    layout: 'qvh' (official QVHighlights/AMR) or 'lighthouse' (moment_detr).
    max_v_l: videos have ceil(duration / 2 s) clips, at most this many.

  Returns:
    A summary; `qid_query_conflicts` lists qids seen with two different query strings (the first one is used).
  """
  records = list(records)
  model = PlantedModel(seed, dims, layout)
  spec = LAYOUTS[layout]
  parts = {p.name: p for p in spec.video_parts}
  for part in list(spec.video_parts) + [spec.text_part]:
    os.makedirs(os.path.join(out_dir, part.subdir), exist_ok=True)

  queries, by_vid, conflicts = _group_records(records)
  pool = sorted(set(queries.values()))

  num_true = num_distractors = 0
  # File creation is latency-bound on shared disks; a few writer threads overlap it with the computation.
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as writers:
    pending: collections.deque = collections.deque()

    def submit(path, array, npz_keys):
      while len(pending) >= 64:           # bounds memory at real dims
        pending.popleft().result()
      pending.append(writers.submit(_save, path, array, npz_keys))

    for vid in sorted(by_vid):
      vid_records = [by_vid[vid][qid] for qid in sorted(by_vid[vid])]
      length = video_length(vid_records, max_v_l)
      signal = np.zeros((length, model.dims.code))    # [L, C]
      for plant in plan_video(vid, vid_records, length, pool, seed):
        end = plant.first_clip + len(plant.strengths)
        signal[plant.first_clip:end] += plant.strengths[:, None] * model.query_code(plant.query)[None, :]
        num_distractors += plant.distractor
        num_true += not plant.distractor
      for name, array in model.video_features(vid, signal).items():
        part = parts[name]
        submit(os.path.join(out_dir, part.subdir, part.filename(vid)), array, part.npz_keys)
    part = spec.text_part
    for qid in sorted(queries):
      submit(os.path.join(out_dir, part.subdir, part.filename(qid)), model.text_features(qid, queries[qid]),
             part.npz_keys)
    while pending:
      pending.popleft().result()

  meta = {"generator": "amr_jax.data.planted", "version": GENERATOR_VERSION, "seed": int(seed), "dims": dims,
          "layout": layout, "code_dim": model.dims.code, "max_v_l": max_v_l, "num_videos": len(by_vid),
          "num_queries": len(queries)}
  with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
  return PlantedSummary(out_dir, len(by_vid), len(queries), num_true, num_distractors, sorted(set(conflicts)))


# --- checking that the query is needed -----------------------------------------------------------------------


def code_retrieval_hit_rate(store: FeatureStore, records: Sequence[MomentRecord], model: PlantedModel,
                            shuffle_seed: Optional[int] = None) -> Tuple[float, float]:
  """How often the clip whose decoded code best matches the query's EOT code lies in a GT window.

  Args:
    store: the planted store.
    records: labelled records to score.
    model: the model that wrote the store (`PlantedModel.from_store`).
    shuffle_seed: when given, each record is scored with the text of another record with a different query.

  Returns:
    (hit_rate, chance): the fraction of records whose best clip is inside a GT window, and the mean fraction of
    GT clips per video (what a query-blind uniform pick gets).
  """
  records = [r for r in records if r.windows]
  text_qids = [r.qid for r in records]
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(len(records))
    for i, record in enumerate(records):
      j = int(order[i])
      while records[j].query == record.query and len(records) > 1:
        j = (j + 1) % len(records)
      text_qids[i] = records[j].qid
  hits = chance = 0.0
  for record, text_qid in zip(records, text_qids):
    codes = model.decode_video(store.video(record.vid))        # [L, C]
    codes = l2_normalize(codes - codes.mean(axis=0, keepdims=True))
    sentence = l2_normalize(model.decode_text(store.text(text_qid)))   # [C]
    best = int(np.argmax(codes @ sentence))
    gt = np.zeros(len(codes), dtype=bool)
    for window in record.windows:
      first, last = window_clips(window, len(codes))
      gt[first:last] = True
    hits += bool(gt[best])
    chance += gt.mean()
  return hits / max(len(records), 1), chance / max(len(records), 1)


def query_blind_r1(records: Sequence[MomentRecord], store_records: Sequence[MomentRecord], seed: int = 0,
                   max_v_l: int = 75) -> Dict[str, float]:
  """R1@0.5 (%) a query-blind model could reach on `records` if it found every planted span perfectly.

  `store_records` are all the rows the store was written from (they fix each video's spans). 'uniform': one of
  the video's planted spans (true windows of its queries and distractors) picked at random; 'longest': one of its
  longest spans (where a long window left no room for full-length distractors, the length gives it away). A
  shuffled-query control that learns to find planted spans but not to read the query sits at or below these.
  """
  queries, by_vid, _ = _group_records(store_records)
  pool = sorted(set(queries.values()))   # the pool write_planted_store plans with
  uniform, longest = [], []
  for record in records:
    vid_records = [by_vid[record.vid][qid] for qid in sorted(by_vid[record.vid])]
    plants = plan_video(record.vid, vid_records, video_length(vid_records, max_v_l), pool, seed)
    spans = np.array([(p.first_clip, p.first_clip + len(p.strengths)) for p in plants], float) * CLIP_LEN_SEC
    windows = np.asarray(record.windows, float)  # [W, 2]
    hit = spans_lib.hull_iou(spans[:, None, 0], spans[:, None, 1], windows[None, :, 0], windows[None, :, 1]).max(1) >= 0.5
    lengths = spans[:, 1] - spans[:, 0]
    uniform.append(hit.mean())
    longest.append(hit[lengths == lengths.max()].mean())
  return {'uniform': 100 * float(np.mean(uniform)), 'longest': 100 * float(np.mean(longest))}
