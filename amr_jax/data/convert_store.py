"""Converts an official-layout (or planted) feature directory into an `array_store` of ArrayRecord shards.

Resumable: a journal lists the finished shards with their sha256; a rerun keeps the verified ones and redoes the
rest (the shard being written when a run stopped is a `.tmp` file and is redone). `verify(out_dir)` checks a store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from concurrent import futures
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from array_record.python import array_record_module

from amr_jax.data import annotations
from amr_jax.data import array_store as store_lib
from amr_jax.data import tfds_store
from amr_jax.data.features import FeatureError, FeatureStore
from amr_jax.data.records import MomentRecord

JOURNAL_FILE = "journal.json"
DEFAULT_SHARD_BYTES = 256 << 20
UNCUT = 10**9            # max_v_l of the source reads: the store keeps every clip, the cut is taken on read
PROGRESS_EVERY_S = 2.0
COMPRESSIONS = ("uncompressed", "zstd:1", "snappy")

RecordsOrPaths = Union[str, os.PathLike, Sequence[str], Sequence[MomentRecord]]


@dataclasses.dataclass
class Progress:
  """Where a conversion stands; `line` is the one-line report the default printer shows."""
  done_records: int
  total_records: int
  done_videos: int
  total_videos: int
  done_texts: int
  total_texts: int
  written_bytes: int      # this run
  elapsed_s: float        # this run
  eta_s: Optional[float]
  final: bool = False

  @property
  def line(self) -> str:
    rate = self.written_bytes / max(self.elapsed_s, 1e-9) / 2**20
    eta = "-" if self.eta_s is None else _fmt_seconds(self.eta_s)
    head = "converted" if self.final else "converting"
    return (f"convert_store: {head} {self.done_records}/{self.total_records} records "
            f"(videos {self.done_videos}/{self.total_videos}, texts {self.done_texts}/{self.total_texts}), "
            f"{self.written_bytes / 2**30:.2f} GiB written in {_fmt_seconds(self.elapsed_s)} ({rate:.0f} MiB/s), "
            f"ETA {eta}")


def _fmt_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def print_progress(progress: Progress) -> None:
  print(progress.line, file=sys.stderr, flush=True)


def _records(records_or_paths: RecordsOrPaths) -> List[MomentRecord]:
  if isinstance(records_or_paths, (str, os.PathLike)):
    return annotations.load_many(records_or_paths)
  items = list(records_or_paths)
  if items and all(isinstance(r, MomentRecord) for r in items):
    return items
  if all(isinstance(p, (str, os.PathLike)) for p in items):
    return annotations.load_many(items)
  raise TypeError("convert: records_or_annotation_paths must be annotation path(s) or MomentRecords")


def plan_keys(records: Sequence[MomentRecord]) -> Dict[str, list]:
  """The vids and qids to convert, sorted (the store does not depend on the order of the annotations)."""
  return {"video": sorted({r.vid for r in records}), "text": sorted({int(r.qid) for r in records})}


def _plan_id(source: dict, keys: Dict[str, list], shard_bytes: int, compression: str) -> str:
  blob = json.dumps({"format": store_lib.FORMAT, "version": store_lib.FORMAT_VERSION, "source": source,
                     "keys": keys, "shard_bytes": int(shard_bytes), "compression": compression},
                    sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _source_description(feature_store: FeatureStore) -> dict:
  try:
    part_shapes = {name: list(shape) for name, shape in feature_store.part_shapes().items()}
  except FeatureError:
    part_shapes = {}
  return {"root": os.path.realpath(feature_store.root), "layout": feature_store.layout.name,
          "video_suffix": feature_store.video_suffix, "video_parts": [p.name for p in feature_store.video_parts],
          "part_shapes": part_shapes}


def _reset_out_dir(out_dir: str) -> None:
  """Removes the files a conversion writes (an out_dir holding anything else is refused)."""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if _is_ours(name):
      os.remove(path)
    else:
      raise FeatureError(out_dir, "out", f"not empty and not an array store (holds {name!r}): use a new --out")


def _is_ours(name: str) -> bool:
  base = name[:-4] if name.endswith(".tmp") else name
  return (base in (store_lib.MANIFEST_FILE, store_lib.INDEX_FILE, JOURNAL_FILE) + tfds_store.METADATA_FILES
          or (base.endswith(".array_record") and base.split("-")[0] in store_lib.KINDS))


def _kept_shards(out_dir: str, journal: dict, num_threads: int) -> List[dict]:
  """The journal's shards whose files still match their sha256, up to the first that does not, per kind."""
  entries = journal.get("shards", [])
  with futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
    sound = list(pool.map(_shard_sound, [out_dir] * len(entries), entries))
  kept, broken_kinds = [], set()
  for entry, good in zip(entries, sound):   # per kind, the entries are in shard order
    if entry["kind"] in broken_kinds or not good:
      broken_kinds.add(entry["kind"])
      continue
    kept.append(entry)
  return kept


def _shard_sound(out_dir: str, entry: dict) -> bool:
  path = os.path.join(out_dir, entry["file"])
  try:
    return os.path.getsize(path) == int(entry["bytes"]) and store_lib.sha256_file(path) == entry["sha256"]
  except OSError:
    return False


class _Reader:
  """Reads the source arrays of one kind in key order, a few ahead on threads (bounded memory)."""

  def __init__(self, feature_store: FeatureStore, kind: str, keys: Sequence, num_threads: int):
    self.store, self.kind, self.keys = feature_store, kind, keys
    self.pool = futures.ThreadPoolExecutor(max(num_threads, 1))
    self.ahead = max(num_threads, 1) * 2

  def _read(self, key):
    try:
      array = self.store.video(key) if self.kind == "video" else self.store.text(key)
      return key, store_lib.encode_record(array), array.shape, None
    except FeatureError as e:
      return key, None, None, str(e)

  def __iter__(self):
    pending = []
    keys = iter(self.keys)
    try:
      for key in keys:
        pending.append(self.pool.submit(self._read, key))
        if len(pending) >= self.ahead:
          yield pending.pop(0).result()
      while pending:
        yield pending.pop(0).result()
    finally:
      for f in pending:
        f.cancel()
      self.pool.shutdown(wait=True, cancel_futures=True)


def convert(feature_dir: str, records_or_annotation_paths: RecordsOrPaths, out_dir: str, *,
            shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Union[bool, Callable[[Progress], None], None] = True,
            layout: str = "auto", video_suffix: str = "", compression: str = "uncompressed",
            read_threads: int = 2) -> dict:
  """Converts the features of every vid / qid of the annotations into an ArrayRecord store; returns the manifest.

  Args:
    feature_dir: the source feature directory (QVHighlights / lighthouse layout, or a planted store).
    records_or_annotation_paths: annotation file(s) (a path, comma-separated paths or a list) or MomentRecords.
    out_dir: the store directory: new or empty, or an earlier (interrupted or finished) conversion of the same
      input, which is resumed (verified shards kept, the rest redone).
    shard_bytes: a shard is closed once it holds at least this many bytes (one record may make it larger).
    progress: True = a progress line with ETA on stderr every 2 s; a callable gets a `Progress` after every
      record; False / None = silent.
    layout, video_suffix: as `FeatureStore` ('auto' detects the layout).
    compression: ArrayRecord compression; 'uncompressed' (default: float features barely compress, 7 % with
      zstd, and decoding would cost CPU on every read), 'zstd:1' or 'snappy'.
    read_threads: threads reading source files.

  Returns:
    The manifest (also `out_dir/manifest.json`), with `conversion` = {kept_shards, written_shards, seconds,
    skipped}. Records whose source files are missing or unreadable are skipped and listed in `skipped`
    (`validate` on the store names them; the launch script prints them).

  Raises:
    FeatureError: bad source directory, or an out_dir that holds something else or another input's conversion.
    AnnotationError / OSError: bad annotation files.
  """
  start = time.perf_counter()
  if compression not in COMPRESSIONS:
    raise ValueError(f"convert: compression={compression!r}, expected one of {', '.join(COMPRESSIONS)}")
  if shard_bytes < 1:
    raise ValueError(f"convert: shard_bytes must be >= 1, got {shard_bytes}")
  records = _records(records_or_annotation_paths)
  if not records:
    raise ValueError("convert: no annotation records given")
  feature_store = FeatureStore(feature_dir, layout=layout, max_v_l=UNCUT, video_suffix=video_suffix)
  source = _source_description(feature_store)
  keys = plan_keys(records)
  plan = _plan_id({k: v for k, v in source.items() if k != "part_shapes"}, keys, shard_bytes, compression)
  os.makedirs(out_dir, exist_ok=True)

  journal_path = os.path.join(out_dir, JOURNAL_FILE)
  journal = None
  if os.path.isfile(journal_path):
    journal = store_lib.read_json(journal_path, "journal")
    if journal.get("plan") != plan:
      raise FeatureError(out_dir, "out", "holds the conversion of another input (other features, annotations, "
                         "shard size or compression): use a new --out, or delete it to start over")
  elif os.listdir(out_dir):
    _reset_out_dir(out_dir)   # refuses a directory holding anything but our files (e.g. an unjournaled start)
  kept = _kept_shards(out_dir, journal, read_threads) if journal else []
  kept_files = {entry["file"] for entry in kept}
  for name in os.listdir(out_dir):   # partial shards, shards after a broken one, stale index / manifest
    if _is_ours(name) and name != JOURNAL_FILE and name not in kept_files:
      os.remove(os.path.join(out_dir, name))
  journal = {"plan": plan, "shards": list(kept)}
  store_lib.write_json_atomic(journal_path, journal)

  totals = {kind: len(keys[kind]) for kind in store_lib.KINDS}
  done = {kind: sum(e["count"] for e in kept if e["kind"] == kind) for kind in store_lib.KINDS}
  written = {"bytes": 0, "records": {kind: 0 for kind in store_lib.KINDS}}
  last_print = [0.0]
  report = print_progress if progress is True else (progress or None)
  run_start = time.perf_counter()
  est_record_bytes = {kind: _first_record_bytes(feature_store, kind, keys[kind]) for kind in store_lib.KINDS}

  def notify(final: bool = False) -> None:
    if report is None:
      return
    now = time.perf_counter()
    if report is print_progress and not final and now - last_print[0] < PROGRESS_EVERY_S:
      return
    last_print[0] = now
    elapsed = now - run_start
    remaining = 0.0
    for kind in store_lib.KINDS:
      n = written["records"][kind]
      per = written["bytes_" + kind] / n if n else est_record_bytes[kind]
      remaining += (totals[kind] - done[kind]) * per
    rate = written["bytes"] / elapsed if elapsed > 0 and written["bytes"] else None
    eta = 0.0 if final else (remaining / rate if rate else None)
    report(Progress(done_records=done["video"] + done["text"], total_records=totals["video"] + totals["text"],
                    done_videos=done["video"], total_videos=totals["video"], done_texts=done["text"],
                    total_texts=totals["text"], written_bytes=written["bytes"], elapsed_s=elapsed, eta_s=eta,
                    final=final))

  written["bytes_video"] = written["bytes_text"] = 0
  written_shards = 0
  for kind in store_lib.KINDS:
    shard_number = sum(1 for e in kept if e["kind"] == kind)
    position = done[kind]
    todo = keys[kind][position:]
    shard = None
    for key, data, shape, error in _Reader(feature_store, kind, todo, read_threads):
      if shard is None:
        shard = _ShardWriter(out_dir, kind, shard_number, first=position, compression=compression)
      if error is not None:
        shard.skip(key, error)
      else:
        shard.write(key, data, shape)
        written["bytes"] += len(data)
        written["bytes_" + kind] += len(data)
        written["records"][kind] += 1
      position += 1
      done[kind] += 1
      if shard.bytes >= shard_bytes:
        journal["shards"].append(shard.finish())
        store_lib.write_json_atomic(journal_path, journal)
        written_shards += 1
        shard_number += 1
        shard = None
      notify()
    if shard is not None:
      journal["shards"].append(shard.finish())
      store_lib.write_json_atomic(journal_path, journal)
      written_shards += 1
  notify(final=True)
  for kind in store_lib.KINDS:
    converted = sum(e["num_records"] for e in journal["shards"] if e["kind"] == kind)
    if totals[kind] and not converted:
      first = next(s for e in journal["shards"] if e["kind"] == kind for s in e["skipped"])
      raise FeatureError(feature_store.root, kind, f"none of the {totals[kind]} {kind} records could be read "
                         f"(wrong --features directory?); first: {first[1]}")

  manifest = _finish(out_dir, journal, source, feature_store, keys, shard_bytes, compression)
  tfds_store.write_metadata(out_dir, manifest)   # the store is also a TFDS dataset (tfds.builder_from_directory)
  manifest["conversion"] = {"kept_shards": len(kept), "written_shards": written_shards,
                            "seconds": time.perf_counter() - start, "skipped": len(manifest["skipped"])}
  return manifest


def _first_record_bytes(feature_store: FeatureStore, kind: str, keys: Sequence) -> float:
  """An estimate of one record's bytes (for the ETA before any record of the kind is written)."""
  for key in keys[:3]:
    try:
      array = feature_store.video(key) if kind == "video" else feature_store.text(key)
      return float(array.nbytes)
    except FeatureError:
      continue
  return 0.0


class _ShardWriter:
  """Writes one shard to `<name>.tmp`; `finish` closes, hashes and renames it and returns its journal entry."""

  def __init__(self, out_dir: str, kind: str, number: int, first: int, compression: str):
    self.kind, self.first = kind, first
    self.name = store_lib.shard_name(kind, number)
    self.path = os.path.join(out_dir, self.name)
    self.tmp = self.path + ".tmp"
    self.writer = array_record_module.ArrayRecordWriter(self.tmp, f"group_size:1,{compression}")
    if not self.writer.ok():
      raise OSError(f"{self.tmp}: cannot open an ArrayRecord writer")
    self.records: List[list] = []      # [key, position, length, width]
    self.skipped: List[list] = []      # [key, error]
    self.count = 0
    self.bytes = 0

  def write(self, key, data: bytes, shape: Tuple[int, ...]) -> None:
    self.writer.write(data)
    self.records.append([key, len(self.records), int(shape[0]), int(shape[1])])
    self.count += 1
    self.bytes += len(data)

  def skip(self, key, error: str) -> None:
    self.skipped.append([key, error])
    self.count += 1

  def finish(self) -> dict:
    self.writer.close()
    digest = store_lib.sha256_file(self.tmp)
    size = os.path.getsize(self.tmp)
    os.replace(self.tmp, self.path)
    return {"file": self.name, "kind": self.kind, "first": self.first, "count": self.count,
            "num_records": len(self.records), "bytes": size, "sha256": digest, "records": self.records,
            "skipped": self.skipped}


def _finish(out_dir: str, journal: dict, source: dict, feature_store: FeatureStore, keys: Dict[str, list],
            shard_bytes: int, compression: str) -> dict:
  """Writes index.json and manifest.json from the journal; returns the manifest."""
  shards, index, skipped = [], {kind: [] for kind in store_lib.KINDS}, []
  widths = {kind: [] for kind in store_lib.KINDS}
  ordered = sorted(journal["shards"], key=lambda e: (store_lib.KINDS.index(e["kind"]), e["first"]))
  for number, entry in enumerate(ordered):   # canonical order, whatever the resume history
    shards.append({k: entry[k] for k in ("file", "kind", "num_records", "bytes", "sha256")})
    for key, position, length, width in entry["records"]:
      index[entry["kind"]].append([key, number, position, length, width])
      widths[entry["kind"]].append(width)
    skipped.extend({"kind": entry["kind"], "key": key, "error": error} for key, error in entry["skipped"])
  index_path = os.path.join(out_dir, store_lib.INDEX_FILE)
  store_lib.write_json_atomic(index_path, index)

  def most_common(values):
    return int(np.bincount(values).argmax()) if values else 0

  manifest = {
      "format": store_lib.FORMAT, "version": store_lib.FORMAT_VERSION, "plan": journal["plan"],
      "source": source, "record_format": "npy float32 [L, D]; video uncut (max_v_l is applied on read)",
      "compression": compression, "shard_bytes": int(shard_bytes),
      "video_dim": most_common(widths["video"]), "text_dim": most_common(widths["text"]),
      "num_videos": len(index["video"]), "num_texts": len(index["text"]),
      "planned_videos": len(keys["video"]), "planned_texts": len(keys["text"]),
      "decoded_bytes": {kind: int(sum(4 * e[3] * e[4] for e in index[kind])) for kind in store_lib.KINDS},
      "shards": shards,
      "index": {"file": store_lib.INDEX_FILE, "bytes": os.path.getsize(index_path),
                "sha256": store_lib.sha256_file(index_path)},
      "skipped": skipped,
  }
  store_lib.write_json_atomic(os.path.join(out_dir, store_lib.MANIFEST_FILE), manifest)
  del feature_store
  return manifest


def verify(out_dir: str, *, deep: bool = False, num_threads: int = 2) -> List[str]:
  """Problems of a converted store, one line each ([] = sound): manifest, index, every shard's size and sha256,
  record counts and index positions; `deep` also decodes every record and checks its shape against the index."""
  try:
    manifest = store_lib.load_manifest(out_dir)
  except FeatureError as e:
    return [str(e)]
  problems = store_lib.check_shard_files(out_dir, manifest, checksums=True, num_threads=num_threads)
  if problems:
    return problems
  index_path = os.path.join(out_dir, manifest["index"]["file"])
  try:
    index = store_lib.read_json(index_path, "index")
  except FeatureError as e:
    return [str(e)]
  shards = manifest["shards"]
  counts = [0] * len(shards)
  for kind in store_lib.KINDS:
    for key, shard, position, length, width in index.get(kind, ()):
      if not 0 <= shard < len(shards) or shards[shard]["kind"] != kind:
        problems.append(f"{index_path}: field={kind}: key {key} points at shard {shard}, not a {kind} shard")
        continue
      if not 0 <= position < int(shards[shard]["num_records"]):
        problems.append(f"{index_path}: field={kind}: key {key} at position {position}, shard {shards[shard]['file']} "
                        f"has {shards[shard]['num_records']} records")
      counts[shard] += 1
  for number, entry in enumerate(shards):
    path = os.path.join(out_dir, entry["file"])
    if counts[number] != int(entry["num_records"]):
      problems.append(f"{path}: field=num_records: the index lists {counts[number]} records, the manifest "
                      f"{entry['num_records']}")
    try:
      reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0,max_parallelism:0")
      found = reader.num_records()
      reader.close()
    except Exception as e:  # pylint: disable=broad-except  (riegeli raises RuntimeError / ValueError)
      problems.append(f"{path}: field=shard: unreadable ArrayRecord file ({type(e).__name__}: {e})")
      continue
    if found != int(entry["num_records"]):
      problems.append(f"{path}: field=num_records: file holds {found} records, the manifest says "
                      f"{entry['num_records']}")
  if deep and not problems:
    store = store_lib.ArrayStore(out_dir, max_v_l=UNCUT, verify="size", cache_bytes=0)
    for kind in store_lib.KINDS:
      for key in (store.vids if kind == "video" else store.qids):
        try:
          store.video(key) if kind == "video" else store.text(key)
        except FeatureError as e:
          problems.append(str(e))
    store.close()
  return problems
