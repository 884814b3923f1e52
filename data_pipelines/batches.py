"""Deterministic, resumable tf.data batches over an in-memory feature cache, sharded per process.

The global batch of step s is a pure function of (seed, s): resuming at any step replays the same data.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Optional, Sequence

import numpy as np

from amr_jax.data.records import MomentRecord
from data_pipelines.examples import PadSpec, build_example, stack_examples


def seeded_rng(*keys: int | str) -> np.random.Generator:
  """A numpy Generator keyed by a tuple of ints/strings (stable across processes and runs)."""
  digest = hashlib.sha256('/'.join(str(k) for k in keys).encode()).digest()
  return np.random.default_rng(np.frombuffer(digest[:16], np.uint32))


class FeatureCache:
  """Reads every video/text feature once and keeps it in memory (the read cost is paid once).

  Holds the store's L2-normalised arrays; `nbytes` reports the footprint.
  """

  def __init__(self, store, records: Sequence[MomentRecord], progress: Optional[Callable] = None):
    self.store = store
    self.video: dict[str, np.ndarray] = {}
    self.text: dict[int, np.ndarray] = {}
    for i, r in enumerate(records):
      if r.vid not in self.video:
        self.video[r.vid] = np.asarray(store.video(r.vid), np.float32)
      if r.qid not in self.text:
        self.text[r.qid] = np.asarray(store.text(r.qid), np.float32)
      if progress is not None:
        progress(i + 1, len(records))

  @property
  def nbytes(self) -> int:
    return sum(v.nbytes for v in self.video.values()) + sum(t.nbytes for t in self.text.values())


@dataclasses.dataclass
class Split:
  """Records + cached features + padded shapes: builds any sample of the split deterministically."""
  records: list
  cache: FeatureCache
  spec: PadSpec
  # Optional sample generator for augmented splits: (index, rng) -> (record, video [L, Dv]).
  augmented: Optional[Callable[[int, np.random.Generator], tuple]] = None
  num_augmented: int = 0
  infos: Optional[list] = None   # per augmented sample: how it was made (AMR's curriculum reads it)
  text_of: Optional[dict] = None  # qid -> qid whose text features are used (shuffled-query control)

  def __len__(self):
    return self.num_augmented if self.augmented is not None else len(self.records)

  def example(self, index: int, rng: np.random.Generator) -> dict:
    if self.augmented is not None:
      record, video = self.augmented(index, rng)
    else:
      record = self.records[index]
      video = self.cache.video[record.vid]
    text_qid = self.text_of.get(record.qid, record.qid) if self.text_of else record.qid
    return build_example(record, video, self.cache.text[text_qid], self.spec, rng)


def shuffled_text_map(records: Sequence[MomentRecord], seed: int) -> dict:
  """qid -> another record's qid with a different query (the shuffled-query control)."""
  qids = sorted({r.qid for r in records})
  query = {r.qid: r.query for r in records}
  perm = seeded_rng(seed, 'shuffle_queries').permutation(len(qids))
  out = {}
  for i, q in enumerate(qids):
    j = int(perm[i])
    while query[qids[j]] == query[q] and len(qids) > 1:
      j = (j + 1) % len(qids)
    out[q] = qids[j]
  return out


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return seeded_rng(seed, 'epoch', epoch).permutation(n)


def uniform_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """Global sample indices of step `step`: shuffled epochs without replacement, remainder dropped."""
  steps_per_epoch = max(n // global_batch, 1)
  epoch, pos = divmod(step, steps_per_epoch)
  perm = epoch_permutation(seed, epoch, n)
  if n < global_batch:  # tiny splits: wrap around
    perm = np.resize(perm, global_batch)
    pos = 0
  return perm[pos * global_batch:(pos + 1) * global_batch]


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by {process_count} processes')
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


def make_train_batch(split: Split, seed: int, step: int, global_batch: int, process_index: int = 0,
                     process_count: int = 1, index_fn: Optional[Callable] = None) -> dict:
  """This process's slice of the global batch of `step` (numpy, batch contract of data_pipelines)."""
  if index_fn is None:
    indices = uniform_indices(seed, step, len(split), global_batch)
  else:
    indices = index_fn(step)
  sl = local_slice(global_batch, process_index, process_count)
  examples = [split.example(int(i), seeded_rng(seed, 'sample', step, k))
              for k, i in zip(range(sl.start, sl.stop), indices[sl])]
  return stack_examples(examples)


def train_dataset(data, *, seed: int, global_batch: int, start_step: int, num_steps: int,
                  process_index: int = 0, process_count: int = 1, index_fn: Optional[Callable] = None,
                  prefetch: int = 2):
  """tf.data over steps [start_step, num_steps): each element is this process's slice of one step.

  `data` is any `amr_jax.task.TrainData`; `index_fn(step)` (its sample order, optional) gives the global indices.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (TF starts slowly; only training needs it)
  tf.config.set_visible_devices([], 'GPU')

  def host_batch(step: int) -> dict:
    indices = None if index_fn is None else index_fn(step)
    return data.batch(seed, step, global_batch, process_index, process_count, indices=indices)

  probe = host_batch(start_step)
  keys = sorted(probe)
  dtypes = [tf.as_dtype(probe[k].dtype) for k in keys]
  shapes = [probe[k].shape for k in keys]

  def build(step):
    batch = host_batch(int(step))
    return [batch[k] for k in keys]

  def to_dict(step):
    arrays = tf.numpy_function(build, [step], dtypes, stateful=False)
    for a, s in zip(arrays, shapes):
      a.set_shape(s)
    return dict(zip(keys, arrays))

  ds = tf.data.Dataset.range(start_step, num_steps)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).map(to_dict, num_parallel_calls=2, deterministic=True)
  return ds.prefetch(prefetch)


def eval_batches(split: Split, batch_size: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1):
  """Sequential batches over the whole split; the last one is padded with copies (sample_valid = 0)."""
  n = len(split.records)
  for start in range(0, n, batch_size):
    idx = list(range(start, min(start + batch_size, n)))
    pad = batch_size - len(idx)
    idx = idx + [idx[0]] * pad
    sl = local_slice(batch_size, process_index, process_count)
    examples = []
    for k in range(sl.start, sl.stop):
      ex = split.example(idx[k], seeded_rng(seed, 'eval', idx[k]))
      if k >= batch_size - pad:
        ex['sample_valid'] = np.float32(0)
      examples.append(ex)
    yield stack_examples(examples)
