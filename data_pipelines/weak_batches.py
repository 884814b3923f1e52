"""Weak-MR batches (CPL layout, fixed padded shapes): pooled clip features + encoded queries, no timestamps.

The global train batch of step s is a pure function of (seed, s), as `data_pipelines.batches`; it carries no
timestamp, window or duration. Eval batches add `duration`, `gt_sec` and `qid`. Shapes (B batch, F = num_clips,
W = max_words, Df / Dw feature widths):
  frames_feat   [B, F, Df] f32   CPL-pooled clip features (videos are never padded: frames_mask is all 1)
  frames_mask   [B, F]     f32   1 = valid clip
  words_id      [B, W]     i32   vocabulary ids of the kept words w1..wn (n = min(len, W)), 0 after
  words_feat    [B, W, Dw] f32   their word vectors, 0 after (no start slot: the model prepends its start vector)
  words_mask    [B, W]     f32   1 on the n words
  weights       [B, W]     f32   masking probabilities: softmax of the POS weights over the n words, 0 after
  sample_valid  [B]        f32   0 for padding rows of a final eval batch
  masked_words  [B, W]     f32   only with mask_in_loader=True: the words to mask, drawn as CPL (see below)
  duration      [B]        f32   eval only: seconds
  gt_sec        [B, 2]     f32   eval only: GT [start, end] seconds (exact float64 values: EvalData ground truth)
  qid           [B]        i64   eval only: the record's qid
Against CPL's collate (fixture cpl_reference inputs.npz): our words_* [:, j] = its slot j + 1 (its slot 0 is a
placeholder that the model overwrites with start_vec, Q3); its batch-dependent Lmax = max(sum(words_mask, 1)).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from amr_jax.data.records import MomentRecord
from amr_jax.data.vocab import EncodedQuery, TextEncoder, masking_probabilities
from amr_jax.data.weak_mr import WeakFeatureStore
from data_pipelines.batches import local_slice, seeded_rng, uniform_indices

TRAIN_KEYS = ('frames_feat', 'frames_mask', 'words_id', 'words_feat', 'words_mask', 'weights', 'sample_valid')
MASKED_KEY = 'masked_words'
EVAL_EXTRA_KEYS = ('duration', 'gt_sec', 'qid')


@dataclasses.dataclass(frozen=True)
class WeakPadSpec:
  """Fixed batch shapes: F clips per video (CPL: 200) and W words per query (CPL: 20); the pooling rule."""
  num_clips: int = 200
  max_words: int = 20
  pooling: str = 'cpl'            # weak_mr.pool_clips mode ('cpl' = the original, 'uniform')


class VideoCache:
  """Pooled [F, Df] features per vid, read once (cache=True) or on every request."""

  def __init__(self, store: WeakFeatureStore, vids: Sequence[str], num_clips: int, cache: bool = True,
               progress: Optional[Callable[[int, int], None]] = None, pooling: str = 'cpl'):
    self.store = store
    self.num_clips = num_clips
    self.cache = cache
    self.pooling = pooling
    self._pooled: Dict[str, np.ndarray] = {}
    if cache:
      unique = list(dict.fromkeys(vids))
      for i, vid in enumerate(unique):
        self._pooled[vid] = store.pooled(vid, num_clips, pooling)
        if progress is not None:
          progress(i + 1, len(unique))

  def get(self, vid: str) -> np.ndarray:
    if vid in self._pooled:
      return self._pooled[vid]
    return self.store.pooled(vid, self.num_clips, self.pooling)

  @property
  def nbytes(self) -> int:
    return sum(v.nbytes for v in self._pooled.values())


@dataclasses.dataclass
class WeakSplit:
  """Records + their encoded queries + pooled videos + the word-vector table: builds any sample.

  Attributes:
    records: the samples (GT windows/durations are read only by eval examples).
    queries: the encoded sentence fed for each record (another record's under a shuffled-query control).
    videos: pooled features per vid.
    word_table: float32 [K + 1, Dw], row = vocabulary id.
    spec: the padded shapes.
  """
  records: List[MomentRecord]
  queries: List[EncodedQuery]
  videos: VideoCache
  word_table: np.ndarray
  spec: WeakPadSpec

  def __len__(self) -> int:
    return len(self.records)

  @property
  def frame_dim(self) -> int:
    return int(self.videos.get(self.records[0].vid).shape[-1])

  def example(self, index: int, *, labels: bool = False,
              mask_rng: Optional[np.random.RandomState] = None) -> dict:
    """Arrays of one sample (no batch axis)."""
    record, query = self.records[index], self.queries[index]
    width = self.spec.max_words
    n = min(len(query.ids), width)
    ids = np.zeros(width, np.int32)
    ids[:n] = query.ids[:n]
    words_feat = np.zeros((width, self.word_table.shape[1]), np.float32)
    words_feat[:n] = self.word_table[ids[:n]]
    words_mask = np.zeros(width, np.float32)
    words_mask[:n] = 1.0
    weights = np.zeros(width, np.float32)
    weights[:n] = masking_probabilities(query.raw_weights, width)
    frames = self.videos.get(record.vid)
    ex = {
        'frames_feat': np.asarray(frames, np.float32),
        'frames_mask': np.ones(len(frames), np.float32),
        'words_id': ids,
        'words_feat': words_feat,
        'words_mask': words_mask,
        'weights': weights,
        'sample_valid': np.float32(1.0),
    }
    if mask_rng is not None:
      ex[MASKED_KEY] = draw_masked_words(weights, n, mask_rng)
    if labels:
      window = record.windows[0] if record.windows else (0.0, 0.0)
      ex['duration'] = np.float32(record.duration if record.duration is not None else 0.0)
      ex['gt_sec'] = np.asarray(window, np.float32)
      ex['qid'] = np.int64(record.qid)
    return ex


def encode_queries(records: Sequence[MomentRecord], encoder: TextEncoder,
                   query_of: Optional[Mapping[int, int]] = None) -> List[EncodedQuery]:
  """The encoded sentence of each record; with `query_of` (qid -> qid) the mapped record's sentence instead."""
  sentence = {r.qid: r.query for r in records}
  memo: Dict[str, EncodedQuery] = {}
  out = []
  for r in records:
    text = sentence.get(query_of.get(r.qid, r.qid), r.query) if query_of else r.query
    if text not in memo:
      memo[text] = encoder.encode(text)
    out.append(memo[text])
  return out


def build_weak_split(records: Sequence[MomentRecord], store: WeakFeatureStore, encoder: TextEncoder,
                     word_table: np.ndarray, spec: WeakPadSpec = WeakPadSpec(), *,
                     query_of: Optional[Mapping[int, int]] = None, cache: bool = True,
                     progress: Optional[Callable[[int, int], None]] = None) -> WeakSplit:
  """A `WeakSplit` over validated records (run `weak_mr.preflight` first: every record needs a kept word)."""
  records = list(records)
  queries = encode_queries(records, encoder, query_of)
  empty = [r for r, q in zip(records, queries) if not q.ids]
  if empty:
    r = empty[0]
    raise ValueError(f'{r.source}:{r.line}: vid={r.vid} qid={r.qid} field=sentence: no vocabulary word left '
                     f'({len(empty)} such sample(s); validate with weak_mr.preflight first)')
  videos = VideoCache(store, [r.vid for r in records], spec.num_clips, cache=cache, progress=progress,
                      pooling=spec.pooling)
  return WeakSplit(records, queries, videos, np.asarray(word_table, np.float32), spec)


def draw_masked_words(weights: np.ndarray, num_words: int, rng: np.random.RandomState) -> np.ndarray:
  """float32 [W]: 1 on the words to mask, drawn as CPL's `_mask_words`.

  max(n // 3, 1) distinct positions among the n words, with probabilities weights[:n], without replacement,
  by numpy's legacy `RandomState.choice` (the original uses the global legacy RNG); nothing when n < 1.
  """
  out = np.zeros(len(weights), np.float32)
  if num_words < 1:
    return out
  count = max(num_words // 3, 1)
  choices = rng.choice(np.arange(1, num_words + 1), count, replace=False, p=weights[:num_words])
  out[choices - 1] = 1.0
  return out


def mask_rng(*keys) -> np.random.RandomState:
  """A legacy RandomState keyed by a tuple (stable across processes): the loader-side masking draw."""
  return np.random.RandomState(seeded_rng(*keys).integers(0, 2**32, dtype=np.uint64).astype(np.uint32))


def stack(examples: Sequence[dict]) -> dict:
  return {k: np.stack([ex[k] for ex in examples], 0) for k in examples[0]}


def make_train_batch(split: WeakSplit, seed: int, step: int, global_batch: int, process_index: int = 0,
                     process_count: int = 1, index_fn: Optional[Callable[[int], np.ndarray]] = None, *,
                     mask_in_loader: bool = False) -> dict:
  """This process's rows of the global batch of `step`: TRAIN_KEYS (+ masked_words), no timestamp entry.

  Samples: shuffled epochs without replacement (`batches.uniform_indices`), or `index_fn(step)`. With
  mask_in_loader the masking is drawn here from a RandomState keyed by (seed, step, row of the global batch).
  """
  indices = uniform_indices(seed, step, len(split), global_batch) if index_fn is None else index_fn(step)
  sl = local_slice(global_batch, process_index, process_count)
  examples = [split.example(int(i), mask_rng=mask_rng(seed, 'mask', step, k) if mask_in_loader else None)
              for k, i in zip(range(sl.start, sl.stop), indices[sl])]
  return stack(examples)


def eval_batches(split: WeakSplit, batch_size: int, process_index: int = 0, process_count: int = 1, *,
                 mask_in_loader: bool = False, seed: int = 0) -> Iterator[dict]:
  """Sequential batches in record order (CPL's unshuffled test loader), the last one padded with copies of its
  first row (sample_valid = 0; a copy never changes the batch's longest sentence). Adds EVAL_EXTRA_KEYS."""
  n = len(split)
  sl = local_slice(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    idx = list(range(start, min(start + batch_size, n)))
    pad = batch_size - len(idx)
    idx += [idx[0]] * pad
    examples = []
    for k in range(sl.start, sl.stop):
      rng = mask_rng(seed, 'eval_mask', idx[k]) if mask_in_loader else None
      ex = split.example(idx[k], labels=True, mask_rng=rng)
      if k >= batch_size - pad:
        ex['sample_valid'] = np.float32(0.0)
      examples.append(ex)
    yield stack(examples)


def batch_keys(*, eval_batch: bool = False, mask_in_loader: bool = False) -> tuple:
  """The entries a batch has, in TRAIN_KEYS order."""
  keys = TRAIN_KEYS + ((MASKED_KEY,) if mask_in_loader else ())
  return keys + (EVAL_EXTRA_KEYS if eval_batch else ())
