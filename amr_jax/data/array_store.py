"""Bounded-memory feature source: per-vid / per-qid float32 features in ArrayRecord shards, read on demand.

`ArrayStore` has the read API of `features.FeatureStore` (and what `validate.validate` calls on a store); a byte-
budgeted LRU holds the decoded records, so memory stays bounded whatever the store size. Written by `convert_store`.

Store directory:
  manifest.json          format, widths, counts, source, one {file, kind, num_records, bytes, sha256} per shard
  index.json             vid / qid -> (shard, position, length, width); checksum in the manifest
  video-NNNNN.array_record, text-NNNNN.array_record
                         one record per vid / qid: the .npy bytes of `FeatureStore.video(vid)` before the
                         `max_v_l` cut (the cut is taken on read, so one store serves any max_v_l) / `text(qid)`
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import threading
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from array_record.python import array_record_data_source

from amr_jax.data.features import FeatureError, FeaturePart, Layout, _parse_npy

FORMAT = "amr_jax.array_store"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
KINDS = ("video", "text")
DEFAULT_CACHE_BYTES = 512 << 20
VERIFY_MODES = ("all", "lazy", "size")
CONVERT_HINT = "re-run launch/convert_store.py on this --out to redo it"

# The record of a vid / qid, seen by `validate` as one rank-2 part read from a one-member .npz file.
VIDEO_PART = FeaturePart("video", "", "{key}", ("features",), rank=2, truncate=True)
TEXT_PART = FeaturePart("text", "", "{key}", ("features",), rank=2)
LAYOUT = Layout(name="array_record", video_parts=(VIDEO_PART,), text_part=TEXT_PART, required_video_parts=("video",))
_NPZ_MEMBER = "features.npy"


def shard_name(kind: str, number: int) -> str:
  return f"{kind}-{number:05d}.array_record"


def sha256_file(path: str, chunk_bytes: int = 8 << 20) -> str:
  """Hex sha256 of a file, read in fixed chunks (constant memory; hashlib releases the GIL on big updates)."""
  digest = hashlib.sha256()
  buffer = bytearray(chunk_bytes)
  view = memoryview(buffer)
  with open(path, "rb", buffering=0) as f:
    while True:
      n = f.readinto(buffer)
      if not n:
        break
      digest.update(view[:n])
  return digest.hexdigest()


def encode_record(array: np.ndarray) -> bytes:
  """The .npy bytes (header + C-order data) of a float32 array."""
  buffer = io.BytesIO()
  np.lib.format.write_array(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
  return buffer.getvalue()


def decode_record(data: bytes) -> np.ndarray:
  """The read-only array a record holds (no copy: it views `data`)."""
  return _parse_npy(data)


def read_json(path: str, what: str) -> dict:
  """A JSON object from `path`; FeatureError naming the file when it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except FileNotFoundError:
    raise FeatureError(path, what, f"missing {what} file") from None
  except (OSError, ValueError) as e:
    raise FeatureError(path, what, f"unreadable {what} file ({type(e).__name__}: {e})") from None
  if not isinstance(value, dict):
    raise FeatureError(path, what, f"{what} file is not a JSON object")
  return value


def write_json_atomic(path: str, value) -> None:
  """Writes JSON to `path` through a temporary file and a rename (readers never see half a file)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, separators=(",", ":"), sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def is_array_store(root: str) -> bool:
  """True when `root` holds a converted store's manifest (a feature directory of an official layout does not)."""
  return os.path.isfile(os.path.join(os.fspath(root), MANIFEST_FILE))


def load_manifest(root: str) -> dict:
  """The manifest of the store at `root`, checked for format and version."""
  path = os.path.join(root, MANIFEST_FILE)
  if not os.path.isdir(root):
    raise FeatureError(root, "root", "array store directory does not exist")
  if not os.path.isfile(path):
    raise FeatureError(path, "manifest", "missing manifest: not a converted array store (convert the feature "
                       "directory with launch/convert_store.py, or finish an interrupted conversion)")
  manifest = read_json(path, "manifest")
  if manifest.get("format") != FORMAT:
    raise FeatureError(path, "format", f"not an array store manifest (format {manifest.get('format')!r})")
  if manifest.get("version") != FORMAT_VERSION:
    raise FeatureError(path, "version", f"store format version {manifest.get('version')!r}, this code reads "
                       f"version {FORMAT_VERSION}: re-convert the store")
  return manifest


def check_shard_files(root: str, manifest: dict, *, checksums: bool, num_threads: int = 2) -> List[str]:
  """One line per missing, truncated or (with `checksums`) corrupt shard or index file; [] when all are sound."""
  files = [(entry["file"], int(entry["bytes"]), entry["sha256"]) for entry in manifest["shards"]]
  index = manifest["index"]
  files.append((index["file"], int(index["bytes"]), index["sha256"]))

  def check(item) -> Optional[str]:
    name, size, expected = item
    path = os.path.join(root, name)
    try:
      found_size = os.path.getsize(path)
    except FileNotFoundError:
      return f"{path}: field=shard: missing shard file ({CONVERT_HINT})"
    except OSError as e:
      return f"{path}: field=shard: unreadable shard file ({e.strerror or e})"
    if found_size != size:
      return f"{path}: field=bytes: shard is {found_size} bytes, the manifest says {size} ({CONVERT_HINT})"
    if not checksums:
      return None
    try:
      found = sha256_file(path)
    except OSError as e:
      return f"{path}: field=shard: unreadable shard file ({e.strerror or e})"
    if found != expected:
      return f"{path}: field=sha256: corrupt shard: expected sha256 {expected}, found {found} ({CONVERT_HINT})"
    return None

  if checksums and num_threads > 1 and len(files) > 1:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      results = list(pool.map(check, files))
  else:
    results = [check(item) for item in files]
  return [r for r in results if r is not None]


class ByteLRU:  # GENERIC-OP: a thread-safe LRU mapping bounded by the total bytes of its values
  """Least-recently-used cache of arrays with a byte budget; an item larger than the budget is not kept."""

  def __init__(self, budget_bytes: int):
    self.budget_bytes = int(budget_bytes)
    self._items: "collections.OrderedDict[object, Tuple[object, int]]" = collections.OrderedDict()
    self._lock = threading.Lock()
    self.nbytes = 0
    self.hits = self.misses = self.evictions = 0

  def get(self, key):
    with self._lock:
      item = self._items.get(key)
      if item is None:
        self.misses += 1
        return None
      self._items.move_to_end(key)
      self.hits += 1
      return item[0]

  def put(self, key, value, nbytes: int) -> None:
    with self._lock:
      if key in self._items or nbytes > self.budget_bytes:
        return
      self._items[key] = (value, nbytes)
      self.nbytes += nbytes
      while self.nbytes > self.budget_bytes:
        _, (_, freed) = self._items.popitem(last=False)
        self.nbytes -= freed
        self.evictions += 1

  def __len__(self) -> int:
    return len(self._items)

  def clear(self) -> None:
    with self._lock:
      self._items.clear()
      self.nbytes = 0

  def stats(self) -> dict:
    return dict(items=len(self._items), nbytes=self.nbytes, budget_bytes=self.budget_bytes, hits=self.hits,
                misses=self.misses, evictions=self.evictions)


class RecordLocation:
  """One record of an `ArrayStore` as a read-only, seekable one-member .npz file object.

  `ArrayStore.part_path` returns these so that `validate.validate` (which reads every feature with
  `features.read_array`, i.e. `zipfile.ZipFile(path)`) checks the records themselves: shape, NaN/Inf, emptiness
  and length against the annotations. `str()` is the shard file and position, which is what problems print.
  Holds no data: each read asks the store's small view cache (a few records).
  """

  def __init__(self, store: "ArrayStore", kind: str, key):
    self.store, self.kind, self.key = store, kind, key
    self._pos = 0

  def __str__(self) -> str:
    return self.store.location(self.kind, self.key)

  __repr__ = __str__

  def __eq__(self, other) -> bool:
    return str(self) == str(other)

  def __hash__(self) -> int:
    return hash(str(self))

  def __format__(self, spec: str) -> str:
    return format(str(self), spec)

  def _data(self) -> bytes:
    return self.store.npz_view(self.kind, self.key)

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def writable(self) -> bool:
    return False

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = 0) -> int:
    size = len(self._data())
    base = {0: 0, 1: self._pos, 2: size}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def read(self, n: int = -1) -> bytes:
    data = self._data()
    end = len(data) if n is None or n < 0 else min(len(data), self._pos + n)
    out = data[self._pos:end]
    self._pos = max(self._pos, end)
    return out

  def close(self) -> None:
    pass


class ArrayStore:
  """Per-vid video and per-qid text features from a converted ArrayRecord store, through a bounded LRU.

  `video(vid)` is float32 [L, Dv] and `text(qid)` float32 [Ntok, Dt]: bit for bit what `FeatureStore` returned
  on the source directory (with the same `max_v_l`). Arrays are read-only views of the decoded record.
  """

  def __init__(self, root: str, max_v_l: int = 75, *, verify: str = "all",
               cache_bytes: int = DEFAULT_CACHE_BYTES, verify_threads: int = 2):
    """Opens a store: reads the manifest and the index, and checks every shard.

    Args:
      root: the converted store directory (`launch/convert_store.py --out`).
      max_v_l: videos are cut to this many clips on read (the store keeps every clip).
      verify: 'all' = sha256 of every shard now, so a corrupt shard stops the run at start-up with one line
        (full QVH train + val, 13.7 GiB: 26-36 s measured on the shared 2-core machine); 'lazy' = each shard's
        sha256 on its first read (a corrupt shard then surfaces at the first batch that touches it, inside the
        input pipeline); 'size' = existence and sizes only. Every mode checks that each shard exists with the
        manifest's size, and the index's checksum.
      cache_bytes: byte budget of the decoded-record LRU.
      verify_threads: threads hashing shards.

    Raises:
      FeatureError: no manifest, wrong format/version, missing, truncated or corrupt shard or index (one line,
        naming the file, and for a corrupt one the expected and the found sha256).
    """
    if verify not in VERIFY_MODES:
      raise ValueError(f"ArrayStore: verify={verify!r}, expected one of {', '.join(VERIFY_MODES)}")
    self.root = os.fspath(root)
    self.max_v_l = max_v_l
    self.verify = verify
    self.manifest = load_manifest(self.root)
    problems = check_shard_files(self.root, self.manifest, checksums=(verify == "all"),
                                 num_threads=verify_threads)
    index_path = os.path.join(self.root, self.manifest["index"]["file"])
    if verify != "all" and not problems:   # the index is small: always checked
      found = sha256_file(index_path)
      if found != self.manifest["index"]["sha256"]:
        problems.append(f"{index_path}: field=sha256: corrupt index: expected sha256 "
                        f"{self.manifest['index']['sha256']}, found {found} ({CONVERT_HINT})")
    if problems:
      more = f" (and {len(problems) - 1} more: {'; '.join(p.split(':')[0] for p in problems[1:])})" \
          if len(problems) > 1 else ""
      path, _, rest = problems[0].partition(": field=")
      field, _, message = rest.partition(": ")
      raise FeatureError(path, field, message + more)
    self.shards: List[dict] = list(self.manifest["shards"])
    self._verified = [verify == "all"] * len(self.shards)
    self._verify_locks = [threading.Lock() for _ in self.shards]
    self._sources: List[Optional[array_record_data_source.ArrayRecordDataSource]] = [None] * len(self.shards)
    self._open_lock = threading.Lock()
    self._index: Dict[str, Dict[object, Tuple[int, int, int, int]]] = {kind: {} for kind in KINDS}
    index = read_json(index_path, "index")
    for kind in KINDS:
      table = self._index[kind]
      for key, shard, position, length, width in index.get(kind, ()):
        table[int(key) if kind == "text" else str(key)] = (int(shard), int(position), int(length), int(width))
    self.skipped: Dict[Tuple[str, object], str] = {
        (s["kind"], int(s["key"]) if s["kind"] == "text" else s["key"]): s["error"]
        for s in self.manifest.get("skipped", ())}
    self.cache = ByteLRU(cache_bytes)
    self._views = ByteLRU(64 << 20)   # .npz views for validation only
    self.layout = LAYOUT
    self.video_parts: Tuple[FeaturePart, ...] = LAYOUT.video_parts
    self.text_part = LAYOUT.text_part
    self._pinned_shapes: Dict[str, Tuple[int, ...]] = {}

  def __repr__(self) -> str:
    return (f"ArrayStore({self.root!r}, videos={len(self._index['video'])}, texts={len(self._index['text'])}, "
            f"max_v_l={self.max_v_l})")

  def close(self) -> None:
    with self._open_lock:
      for source in self._sources:
        if source is not None:
          source.__exit__(None, None, None)
      self._sources = [None] * len(self.shards)
    self.cache.clear()

  def __enter__(self) -> "ArrayStore":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # --- keys and locations ------------------------------------------------------------------------------------

  @property
  def vids(self) -> List[str]:
    return list(self._index["video"])

  @property
  def qids(self) -> List[int]:
    return list(self._index["text"])

  def has_video(self, vid: str) -> bool:
    return vid in self._index["video"]

  def has_text(self, qid: int) -> bool:
    return qid in self._index["text"]

  def video_length(self, vid: str) -> int:
    """Clips `video(vid)` returns (after the `max_v_l` cut), from the index: nothing is read."""
    return min(self._entry("video", vid)[2], self.max_v_l)

  def video_shape(self, vid: str) -> Tuple[int, int]:
    _, _, length, width = self._entry("video", vid)
    return min(length, self.max_v_l), width

  def text_shape(self, qid: int) -> Tuple[int, int]:
    _, _, length, width = self._entry("text", qid)
    return length, width

  def location(self, kind: str, key) -> str:
    """Where the record of a vid / qid lives: '<root>/<shard>#<position>', or the index file when absent."""
    entry = self._index[kind].get(key)
    if entry is None:
      return os.path.join(self.root, self.manifest["index"]["file"])
    return f"{os.path.join(self.root, self.shards[entry[0]]['file'])}#{entry[1]}"

  def video_path(self, vid: str) -> List[str]:
    return [self.location("video", vid)]

  def text_path(self, qid: int) -> List[str]:
    return [self.location("text", qid)]

  def shard_position(self, kind: str, key) -> Tuple[int, int]:
    """(shard number in the manifest, record position in that shard) of a vid / qid."""
    shard, position, _, _ = self._entry(kind, key)
    return shard, position

  def _entry(self, kind: str, key) -> Tuple[int, int, int, int]:
    entry = self._index[kind].get(key)
    if entry is None:
      field = "vid" if kind == "video" else "qid"
      reason = self.skipped.get((kind, key))
      why = f"the conversion skipped it: {reason}" if reason else "not in the store"
      raise FeatureError(os.path.join(self.root, self.manifest["index"]["file"]), kind, f"{field} {key}: {why}")
    return entry

  # --- reads -------------------------------------------------------------------------------------------------

  def _source(self, shard: int) -> array_record_data_source.ArrayRecordDataSource:
    """The shard's data source (opened on first use; after its sha256 check when verify='lazy')."""
    if self.verify == "lazy" and not self._verified[shard]:
      with self._verify_locks[shard]:
        if not self._verified[shard]:
          entry = self.shards[shard]
          path = os.path.join(self.root, entry["file"])
          found = sha256_file(path)
          if found != entry["sha256"]:
            raise FeatureError(path, "sha256", f"corrupt shard: expected sha256 {entry['sha256']}, found {found} "
                               f"({CONVERT_HINT})")
          self._verified[shard] = True
    source = self._sources[shard]
    if source is None:
      with self._open_lock:
        source = self._sources[shard]
        if source is None:
          entry = self.shards[shard]
          # 'path[0:n]' names the records up front, so the file is opened by the first read, not counted now.
          spec = f"{os.path.join(self.root, entry['file'])}[0:{int(entry['num_records'])}]"
          source = array_record_data_source.ArrayRecordDataSource(spec)
          self._sources[shard] = source
    return source

  def record_bytes(self, kind: str, key) -> bytes:
    """The stored bytes (.npy) of a vid's / qid's record."""
    shard, position, _, _ = self._entry(kind, key)
    try:
      return self._source(shard)[position]
    except FeatureError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (riegeli reports corruption as RuntimeError etc.)
      raise FeatureError(f"{os.path.join(self.root, self.shards[shard]['file'])}#{position}", kind,
                         f"unreadable record ({type(e).__name__}: {e})") from None

  def _array(self, kind: str, key) -> np.ndarray:
    cache_key = (kind, key)
    array = self.cache.get(cache_key)
    if array is not None:
      return array
    _, _, length, width = self._entry(kind, key)
    data = self.record_bytes(kind, key)
    try:
      array = decode_record(data)
    except ValueError as e:
      raise FeatureError(self.location(kind, key), kind, f"undecodable record ({e})") from None
    if array.shape != (length, width) or array.dtype != np.float32:
      raise FeatureError(self.location(kind, key), kind, f"record is {array.dtype} {array.shape}, the index says "
                         f"float32 ({length}, {width})")
    self.cache.put(cache_key, array, array.nbytes)
    return array

  def video(self, vid: str) -> np.ndarray:
    """float32 [L, Dv] (read-only): the normalised, aligned, concatenated video features, cut to max_v_l."""
    return self._array("video", vid)[:self.max_v_l]

  def text(self, qid: int) -> np.ndarray:
    """float32 [Ntok, Dt] (read-only): the normalised token features of query `qid`."""
    return self._array("text", qid)

  # --- what validate.validate calls ----------------------------------------------------------------------------

  def part_dir(self, part: FeaturePart) -> str:
    del part
    return self.root

  def part_path(self, part: FeaturePart, key) -> RecordLocation:
    return RecordLocation(self, part.name, key)

  def npz_view(self, kind: str, key) -> bytes:
    """The record as the bytes of a one-member .npz (for `read_array`); a few are cached for the readers."""
    view = self._views.get((kind, key))
    if view is not None:
      return view
    if key not in self._index[kind]:   # a FeatureError passes through read_array with its own message
      reason = self.skipped.get((kind, key))
      raise FeatureError(self.location(kind, key), kind, f"missing record: the conversion skipped it ({reason})"
                         if reason else "missing record: not in the store (convert these features)")
    data = self.record_bytes(kind, key)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
      info = zipfile.ZipInfo(_NPZ_MEMBER, date_time=(1980, 1, 1, 0, 0, 0))
      archive.writestr(info, data)
    view = buffer.getvalue()
    self._views.put((kind, key), view, len(view))
    return view

  def pin_part_shapes(self, shapes: Dict[str, Tuple[int, ...]]) -> None:
    """Fixes the per-clip shape of 'video' / 'text' (e.g. from validated records), as `FeatureStore` does."""
    for name, shape in shapes.items():
      if shape is not None:
        self._pinned_shapes[name] = tuple(int(n) for n in shape)

  def pinned_shape(self, name: str) -> Optional[Tuple[int, ...]]:
    return self._pinned_shapes.get(name)

  def part_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """Per-clip shape of the 'video' and 'text' records (pinned by validation, else the manifest's)."""
    return {"video": self._pinned_shapes.get("video", (int(self.manifest["video_dim"]),)),
            "text": self._pinned_shapes.get("text", (int(self.manifest["text_dim"]),))}

  @property
  def video_dim(self) -> int:
    """Dv, the width of `video()` rows (the most common width at conversion, or the validated one)."""
    return int(np.prod(self.part_shapes()["video"]))

  @property
  def text_dim(self) -> int:
    """Dt, the width of `text()` rows."""
    return int(np.prod(self.part_shapes()["text"]))

  def describe_width(self, kind: str) -> str:
    """How the source made up the width, e.g. 'slowfast 2304 + clip 4x768' ('video') or 'text 4x512'."""
    shapes = self.manifest["source"].get("part_shapes", {})
    names = self.manifest["source"].get("video_parts", []) if kind == "video" else ["text"]
    described = " + ".join(f"{n} {'x'.join(str(d) for d in shapes[n])}" for n in names if n in shapes)
    return described or f"{kind} {self.video_dim if kind == 'video' else self.text_dim}"

  # --- sizes -------------------------------------------------------------------------------------------------

  def decoded_nbytes(self, kind: Optional[str] = None, keys: Optional[Iterable] = None) -> int:
    """Bytes of the decoded records (what an in-memory cache of them would hold), from the index."""
    total = 0
    for k in ((kind,) if kind else KINDS):
      table = self._index[k]
      for key in (table if keys is None else keys):
        _, _, length, width = table[key]
        total += (min(length, self.max_v_l) if k == "video" else length) * width * 4
    return total

  @property
  def disk_bytes(self) -> int:
    return sum(int(s["bytes"]) for s in self.shards) + int(self.manifest["index"]["bytes"])
