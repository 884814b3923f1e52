"""A drop-in for `batches.FeatureCache` that reads features on demand from an `ArrayStore` (bounded memory).

`Split.example`, `make_train_batch` and the online Splice sampler see the same arrays as with the in-memory cache,
so batches are bit-identical for the same (seed, step); only the store's LRU (a byte budget) stays resident.
"""
from __future__ import annotations

import collections.abc
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from amr_jax.data.features import FeatureError
from amr_jax.data.records import MomentRecord


class StreamedVideo:
  """The video features of one vid, read from the store when the values are needed.

  Behaves as a read-only float32 [L, Dv] array for what the pipeline does with it: `len`, `shape`, `dtype`,
  slicing and `np.asarray` / `np.array` read the record (through the store's LRU); `len` and `shape` come from
  the store's index, so the Splice sampler's dry pass over lengths reads nothing.
  """

  __slots__ = ("store", "vid", "shape")
  dtype = np.dtype(np.float32)
  ndim = 2

  def __init__(self, store, vid: str, shape: Tuple[int, int]):
    self.store, self.vid, self.shape = store, vid, shape

  def __len__(self) -> int:
    return self.shape[0]

  @property
  def nbytes(self) -> int:
    return self.shape[0] * self.shape[1] * 4

  @property
  def size(self) -> int:
    return self.shape[0] * self.shape[1]

  def load(self) -> np.ndarray:
    """The values (read-only float32 [L, Dv])."""
    return self.store.video(self.vid)

  def __getitem__(self, index):
    return self.load()[index]

  def __array__(self, dtype=None, copy=None):
    array = self.load()
    if dtype is not None and np.dtype(dtype) != array.dtype:
      if copy is False:
        raise ValueError(f"StreamedVideo({self.vid!r}): a {np.dtype(dtype)} view needs a copy")
      return array.astype(dtype)
    return array.copy() if copy else array

  def __repr__(self) -> str:
    return f"StreamedVideo({self.vid!r}, shape={self.shape})"


class _Mapping(collections.abc.Mapping):
  """A read-only mapping over the keys of a split, whose values the store reads on access."""

  def __init__(self, keys: Sequence, get: Callable):
    self._keys = {k: None for k in keys}
    self._get = get

  def __getitem__(self, key):
    if key not in self._keys:
      raise KeyError(key)
    return self._get(key)

  def __iter__(self) -> Iterator:
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)

  def __contains__(self, key) -> bool:
    return key in self._keys


class StreamCache:
  """Same attributes as `batches.FeatureCache` (`store`, `video`, `text`, `nbytes`), nothing preloaded.

  `video[vid]` is a `StreamedVideo` (reads on use), `text[qid]` the read-only float32 [Ntok, Dt] array. The
  store must have the `ArrayStore` API (`video_shape`, `has_video`, `has_text`, `cache`); its LRU bounds memory.
  """

  def __init__(self, store, records: Sequence[MomentRecord], progress: Optional[Callable] = None):
    """Checks that every vid / qid of `records` is in the store (one line naming the first missing ones).

    Raises:
      FeatureError: vids or qids the store does not hold.
    """
    self.store = store
    vids = list(dict.fromkeys(r.vid for r in records))
    qids = list(dict.fromkeys(r.qid for r in records))
    missing = [f"vid {v}" for v in vids if not store.has_video(v)] + \
        [f"qid {q}" for q in qids if not store.has_text(q)]
    if missing:
      raise FeatureError(store.root, "index", f"{len(missing)} feature record(s) the annotations need are not "
                         f"in the store (first: {', '.join(missing[:5])}); validate the data first")
    shapes = {vid: store.video_shape(vid) for vid in vids}
    self.video = _Mapping(vids, lambda vid: StreamedVideo(store, vid, shapes[vid]))
    self.text = _Mapping(qids, store.text)
    self._decoded_nbytes = (sum(h * w for h, w in shapes.values())
                            + sum(int(np.prod(store.text_shape(q))) for q in qids)) * 4
    if progress is not None:
      progress(len(records), len(records))

  @property
  def nbytes(self) -> int:
    """Bytes held now: the store's LRU of decoded records (bounded by its budget)."""
    return int(self.store.cache.nbytes)

  @property
  def decoded_nbytes(self) -> int:
    """Bytes an in-memory `FeatureCache` of the same records would hold."""
    return self._decoded_nbytes
