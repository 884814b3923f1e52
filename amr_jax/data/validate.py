"""Pre-flight validation: checks annotations against a feature store and reports every problem in one pass.

Each `Problem` formats as one line naming the file, vid/qid and field; `drop_bad` removes the affected records.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from amr_jax.data.annotations import AnnotationError, PathOrPaths, load_annotations, split_paths
from amr_jax.data.features import FeatureError, FeaturePart, FeatureStore, read_array
from amr_jax.data.records import CLIP_LEN_SEC, MomentRecord

_EPS = 1e-6

SCOPE_RECORD = "record"   # one annotation row (file = annotation file, line > 0)
SCOPE_VIDEO = "video"     # a video feature file: every record of that vid is affected
SCOPE_TEXT = "text"       # a text feature file: every record of that qid is affected
SCOPE_STORE = "store"     # the store itself (a missing directory): every record is affected
SCOPE_FILE = "file"       # an annotation file that gave no records (missing, unreadable, empty): nothing to drop


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem found by `validate`.

  Attributes:
    file: the annotation file (record problems) or the feature file/directory (feature problems).
    qid: the query id concerned, or None.
    vid: the video id concerned, or None.
    field: the annotation field or feature part ('relevant_windows[1]', 'slowfast', 'text', ...).
    message: what is wrong.
    line: 1-based line in `file` for record problems, else 0.
    scope: which records the problem makes unusable: 'record', 'video', 'text' or 'store'.
  """
  file: str
  qid: Optional[int]
  vid: Optional[str]
  field: str
  message: str
  line: int = 0
  scope: str = SCOPE_RECORD

  def __str__(self) -> str:
    where = f"{self.file}:{self.line}" if self.line else self.file
    ids = " ".join(x for x in (f"vid={self.vid}" if self.vid is not None else "",
                               f"qid={self.qid}" if self.qid is not None else "") if x)
    return f"{where}: {ids + ' ' if ids else ''}field={self.field}: {self.message}"


def _fmt(x: float) -> str:
  return f"{x:g}"


def _off_grid(x: float, grid: float) -> bool:
  return abs(x / grid - round(x / grid)) > _EPS


class _RecordChecker:
  """Annotation-only checks of one record (no features needed)."""

  def __init__(self, record: MomentRecord, grid_sec: float, problems: List[Problem], with_labels: bool = True):
    self.record = record
    self.grid_sec = grid_sec
    self.problems = problems
    self.with_labels = with_labels

  def add(self, field: str, message: str) -> None:
    r = self.record
    self.problems.append(Problem(r.source, r.qid, r.vid, field, message, line=r.line, scope=SCOPE_RECORD))

  def check_span(self, field: str, span: Tuple[float, float]) -> bool:
    """Range checks shared by windows and wrong spans; True when the span is usable."""
    start, end = span
    duration = self.record.duration
    if not (math.isfinite(start) and math.isfinite(end)):
      self.add(field, f"non-finite span [{start}, {end}]")
      return False
    ok = True
    if start < 0:
      self.add(field, f"negative start {_fmt(start)}")
      ok = False
    if start >= end:
      self.add(field, f"start {_fmt(start)} >= end {_fmt(end)}")
      ok = False
    if duration is not None and math.isfinite(duration) and end > duration + _EPS:
      self.add(field, f"ends at {_fmt(end)}s, past the duration {_fmt(duration)}s")
      ok = False
    return ok

  def run(self) -> None:
    r = self.record
    if not r.query.strip():
      self.add("query", "empty query")
    if r.duration is not None and not (math.isfinite(r.duration) and r.duration > 0):
      self.add("duration", f"duration {r.duration} is not a positive number")
    if not self.with_labels:  # predicting: labels are not needed, so they are not checked
      return
    if not r.windows:
      self.add("relevant_windows", "no GT windows (training and evaluation need labels; predicting does not)")
    for i, window in enumerate(r.windows):
      self.check_span(f"relevant_windows[{i}]", window)
    if r.relevant_clip_ids is not None:
      self.check_clip_ids()
    if r.saliency_scores is not None:
      self.check_saliency()
    if r.wrong_spans is not None:
      self.check_wrong_spans()

  def check_clip_ids(self) -> None:
    r = self.record
    covered = set()
    for start, end in r.windows:
      if math.isfinite(start) and math.isfinite(end) and start < end:
        covered.update(range(int(math.floor(start / CLIP_LEN_SEC)), int(math.ceil(end / CLIP_LEN_SEC - _EPS))))
    outside = [c for c in r.relevant_clip_ids if c < 0 or c not in covered]
    if outside:
      self.add("relevant_clip_ids", f"{len(outside)} clip id(s) outside every window (first: {outside[0]})")
    if len(set(r.relevant_clip_ids)) != len(r.relevant_clip_ids):
      self.add("relevant_clip_ids", "repeated clip ids")

  def check_saliency(self) -> None:
    r = self.record
    if r.relevant_clip_ids is None:
      self.add("saliency_scores", "saliency_scores without relevant_clip_ids")
      return
    if len(r.saliency_scores) != len(r.relevant_clip_ids):
      self.add("saliency_scores", f"{len(r.saliency_scores)} score rows for {len(r.relevant_clip_ids)} clip ids")
    bad = [s for s in r.saliency_scores if not s or any(x < 0 or x > 4 for x in s)]
    if bad:
      self.add("saliency_scores", f"{len(bad)} score row(s) empty or outside 0..4 (first: {list(bad[0])})")

  def check_wrong_spans(self) -> None:
    r = self.record
    for i, span in enumerate(r.wrong_spans):
      field = f"wrong_spans[{i}]"
      if not self.check_span(field, span):
        continue
      if _off_grid(span[0], self.grid_sec) or _off_grid(span[1], self.grid_sec):
        self.add(field, f"[{_fmt(span[0])}, {_fmt(span[1])}] is off the {_fmt(self.grid_sec)} s grid")
      for j, (start, end) in enumerate(r.windows):
        if min(end, span[1]) - max(start, span[0]) > _EPS:
          self.add(field, f"[{_fmt(span[0])}, {_fmt(span[1])}] overlaps GT window {j} "
                          f"[{_fmt(start)}, {_fmt(end)}]")
          break


@dataclasses.dataclass
class _FileResult:
  """What reading one feature file gave: its shape, or the problems found."""
  path: str
  part: FeaturePart
  shape: Optional[Tuple[int, ...]] = None
  problems: List[Tuple[str, str]] = dataclasses.field(default_factory=list)   # (field, message)


def _check_file(path: str, part: FeaturePart) -> _FileResult:
  result = _FileResult(path, part)
  try:
    array = read_array(path, part)
  except FeatureError as e:
    result.problems.append((e.field, e.message))
    return result
  result.shape = tuple(array.shape)
  if array.shape[0] == 0:
    result.problems.append((part.name, f"empty array, shape {array.shape}"))
  if array.dtype.kind == "f":
    finite = np.isfinite(array)
    if not finite.all():
      bad = int(array.size - np.count_nonzero(finite))
      result.problems.append((part.name, f"{bad} NaN/Inf value(s)"))
  return result


def _most_common(shapes: Iterable[Tuple[int, ...]]) -> Optional[Tuple[int, ...]]:
  counts = collections.Counter(shapes)
  if not counts:
    return None
  return counts.most_common(1)[0][0]


def load_checked(paths: PathOrPaths, *, with_labels: bool = True) -> Tuple[List[MomentRecord], List[Problem]]:
  """Loads annotation files without stopping at the first bad row: (the well-formed records, every problem).

  Problems: each unparsable row (file + line, droppable: the row is simply not among the records), and each file
  that is missing, unreadable or empty (scope 'file'). with_labels=False (predicting) does not parse labels.
  Run `validate` on the records next and report both lists together.
  """
  records: List[MomentRecord] = []
  problems: List[Problem] = []
  files = split_paths(paths)
  if not files:
    problems.append(Problem("annotations", None, None, "file", "no annotation file given", scope=SCOPE_FILE))
  for path in files:
    errors: List[AnnotationError] = []
    try:
      rows = load_annotations(path, with_labels=with_labels, errors=errors)
    except FileNotFoundError:
      problems.append(Problem(path, None, None, "file", "missing file", scope=SCOPE_FILE))
      continue
    except IsADirectoryError:
      problems.append(Problem(path, None, None, "file", "is a directory, not an annotation file", scope=SCOPE_FILE))
      continue
    except UnicodeDecodeError as e:
      problems.append(Problem(path, None, None, "file", f"not UTF-8 text (bad byte at offset {e.start})",
                              scope=SCOPE_FILE))
      continue
    except OSError as e:
      problems.append(Problem(path, None, None, "file", f"unreadable ({e.strerror or e})", scope=SCOPE_FILE))
      continue
    problems.extend(Problem(e.path, e.qid, None, e.field, e.message, line=e.line, scope=SCOPE_RECORD)
                    for e in errors)
    if not rows and not errors:
      problems.append(Problem(path, None, None, "file", "empty annotation file: no records", scope=SCOPE_FILE))
    records.extend(rows)
  return records, problems


def validate(records: Sequence[MomentRecord], store: Optional[FeatureStore], *, max_v_l: int = 75,
             grid_sec: float = 2.0, num_threads: int = 4, with_labels: bool = True) -> List[Problem]:
  """Checks annotations against a feature store and returns every problem found (nothing is skipped).

  Record checks: empty query; no windows; windows non-finite, negative, start >= end or past the duration;
  relevant_clip_ids outside the windows; saliency rows that do not match the clip ids or leave 0..4; duplicate
  qids; wrong_spans out of range, off the `grid_sec` grid or overlapping a GT window; no records at all.
  Feature checks, per vid and qid: missing or unreadable file, wrong rank, a width that differs from the
  store's (the most common one, or the one an earlier validation pinned), NaN/Inf, empty arrays, and a video too
  short for its annotation: with L clips after alignment (SlowFast cut to `max_v_l`), every window must end at or
  before L * 2 s (the end rounded up to the 2 s clip grid must be a clip the video has), and every relevant clip
  id and wrong span must lie in it. The store's widths are then pinned to the files that passed
  (`store.video_dim` / `text_dim` no longer depend on which file a directory lists first).

  Args:
    records: the annotation records (from one or more files).
    store: the feature store, or None for annotation-only checks.
    max_v_l: clips kept per video (as the pipeline keeps them).
    grid_sec: the grid wrong spans must lie on.
    num_threads: threads reading feature files.
    with_labels: False = predicting: no label checks at all (rows without windows are fine, and GT windows past
      the kept clips are ignored); the query, duration, qids and features are still checked.

  Returns:
    The problems, record problems first (in record order), then feature problems (in vid/qid order).
  """
  problems: List[Problem] = []
  if not records:
    problems.append(Problem("annotations", None, None, "records", "no annotation records to use (empty input)",
                            scope=SCOPE_FILE))
  first_seen: Dict[int, MomentRecord] = {}
  for record in records:
    _RecordChecker(record, grid_sec, problems, with_labels).run()
    if record.qid in first_seen:
      first = first_seen[record.qid]
      problems.append(Problem(record.source, record.qid, record.vid, "qid",
                              f"duplicate qid (first at {first.source}:{first.line})", line=record.line))
    else:
      first_seen[record.qid] = record
  if store is None:
    return problems
  problems.extend(_check_features(records, store, max_v_l=max_v_l, num_threads=num_threads,
                                  with_labels=with_labels))
  return problems


def _check_features(records: Sequence[MomentRecord], store: FeatureStore, *, max_v_l: int,
                    num_threads: int, with_labels: bool = True) -> List[Problem]:
  problems: List[Problem] = []
  by_vid: Dict[str, List[MomentRecord]] = collections.OrderedDict()
  qids: Dict[int, MomentRecord] = collections.OrderedDict()
  for record in records:
    by_vid.setdefault(record.vid, []).append(record)
    qids.setdefault(record.qid, record)

  jobs: List[Tuple[str, object, FeaturePart]] = []     # (kind, key, part)
  for part in store.video_parts:
    directory = store.part_dir(part)
    if not os.path.isdir(directory):
      problems.append(Problem(directory, None, None, part.name,
                              f"feature directory is missing (needed by {len(by_vid)} videos)",
                              scope=SCOPE_STORE))
      continue
    jobs.extend(("video", vid, part) for vid in by_vid)
  text_dir = store.part_dir(store.text_part)
  if not os.path.isdir(text_dir):
    problems.append(Problem(text_dir, None, None, "text",
                            f"feature directory is missing (needed by {len(qids)} queries)", scope=SCOPE_STORE))
  else:
    jobs.extend(("text", qid, store.text_part) for qid in qids)

  def run(job):
    _, key, part = job
    return _check_file(store.part_path(part, key), part)

  if num_threads > 1 and len(jobs) > 64:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      results = list(pool.map(run, jobs, chunksize=64))
  else:
    results = [run(job) for job in jobs]

  # Widths must agree across the store: the width an earlier validation pinned, else the most common per-clip
  # shape of each part, is the reference; the store then reports these widths (files that passed).
  reference = {name: store.pinned_shape(name) or _most_common(r.shape[1:] for r in results
                                                               if r.part.name == name and r.shape is not None)
               for name in {r.part.name for r in results}}
  store.pin_part_shapes({name: shape for name, shape in reference.items() if shape is not None})

  lengths: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
  video_broken = set()
  for (kind, key, part), result in zip(jobs, results):
    vid, qid = (key, None) if kind == "video" else (qids[key].vid, key)
    scope = SCOPE_VIDEO if kind == "video" else SCOPE_TEXT
    for field, message in result.problems:
      problems.append(Problem(result.path, qid, vid, field, message, scope=scope))
    if result.shape is not None and result.shape[1:] != reference[part.name]:
      problems.append(Problem(result.path, qid, vid, part.name,
                              f"width {result.shape[1:]} differs from the store's {reference[part.name]}",
                              scope=scope))
    if kind == "video":
      if result.shape is None:
        video_broken.add(vid)
      else:
        lengths[vid][part.name] = result.shape[0]

  if not with_labels:
    return problems
  # Windows, clip ids and wrong spans must fit in the video's aligned length.
  for vid, vid_records in by_vid.items():
    if vid in video_broken or len(lengths[vid]) != len(store.video_parts):
      continue
    cut = [min(lengths[vid][p.name], max_v_l) if p.truncate else lengths[vid][p.name] for p in store.video_parts]
    num_clips = min(cut)
    seconds = num_clips * CLIP_LEN_SEC
    where = ", ".join(f"{p.name} {lengths[vid][p.name]}" for p in store.video_parts)
    for record in vid_records:
      def add(field, message, record=record):
        problems.append(Problem(record.source, record.qid, record.vid, field, message, line=record.line))
      for i, (start, end) in enumerate(record.windows):
        if math.isfinite(end) and end > seconds + _EPS:
          add(f"relevant_windows[{i}]", f"window [{_fmt(start)}, {_fmt(end)}] ends past the video features: "
                                        f"{num_clips} clips = {_fmt(seconds)}s ({where})")
      if record.relevant_clip_ids:
        late = [c for c in record.relevant_clip_ids if c >= num_clips]
        if late:
          add("relevant_clip_ids", f"{len(late)} clip id(s) >= {num_clips} clips of the video (first: {late[0]})")
      for i, (start, end) in enumerate(record.wrong_spans or ()):
        if math.isfinite(end) and end > seconds + _EPS:
          add(f"wrong_spans[{i}]", f"span [{_fmt(start)}, {_fmt(end)}] ends past the video features: "
                                   f"{num_clips} clips = {_fmt(seconds)}s")
  return problems


def drop_bad(records: Sequence[MomentRecord],
             problems: Sequence[Problem]) -> Tuple[List[MomentRecord], List[MomentRecord]]:
  """Splits records into (kept, dropped): a record is dropped when any problem concerns it.

  Record problems drop that row (file and line; an unparsable row was never loaded); video problems drop every
  record of the vid; text problems every record of the qid; store problems drop everything; file problems
  (an empty or missing annotation file) drop nothing, as no record came from that file.
  """
  if any(p.scope == SCOPE_STORE for p in problems):
    return [], list(records)
  bad_rows = {(p.file, p.line) for p in problems if p.scope == SCOPE_RECORD}
  bad_vids = {p.vid for p in problems if p.scope == SCOPE_VIDEO}
  bad_qids = {p.qid for p in problems if p.scope == SCOPE_TEXT}
  kept, dropped = [], []
  for record in records:
    bad = (record.source, record.line) in bad_rows or record.vid in bad_vids or record.qid in bad_qids
    (dropped if bad else kept).append(record)
  return kept, dropped


def unparsed_rows(records: Sequence[MomentRecord], problems: Sequence[Problem]) -> List[Tuple[str, int]]:
  """(file, line) of the rows `load_checked` could not parse (record problems that match no loaded record)."""
  loaded = {(r.source, r.line) for r in records}
  rows = {(p.file, p.line) for p in problems if p.scope == SCOPE_RECORD and p.line and (p.file, p.line) not in loaded}
  return sorted(rows)


def summarize(records: Sequence[MomentRecord], problems: Sequence[Problem]) -> str:
  """One line: how many problems, of which fields, and how many records they make unusable."""
  _, dropped = drop_bad(records, problems)
  by_field = collections.Counter(p.field.split("[")[0] for p in problems)
  fields = ", ".join(f"{name} {count}" for name, count in sorted(by_field.items()))
  videos = len({r.vid for r in records})
  queries = len({r.qid for r in records})
  unparsed = len(unparsed_rows(records, problems))
  head = f"{len(problems)} problem(s)" if problems else "no problems"
  detail = ""
  if problems:
    detail = f" ({fields}); {len(dropped)} of {len(records)} records affected"
    if unparsed:
      detail += f", {unparsed} unparsable row(s) not loaded"
  return f"{head} in {len(records)} records, {videos} videos, {queries} queries{detail}"


def check_widths(store: FeatureStore, expected_dims: Dict[str, int], *,
                 expected_by: str = "the model") -> List[Problem]:
  """Problems when the store's feature widths differ from `expected_dims` ({'video_dim', 'text_dim'}, no TEF).

  For the predictor / exporter before any compute: each problem names the store, the expected and the found
  width (and how the found one is made up), instead of a shape error deep inside the model.
  """
  problems: List[Problem] = []
  for key, kind in (("video_dim", "video"), ("text_dim", "text")):
    if expected_dims.get(key) is None:
      continue
    expected = int(expected_dims[key])
    try:
      found = store.video_dim if kind == "video" else store.text_dim
      parts = store.describe_width(kind)
    except FeatureError as e:
      problems.append(Problem(e.path, None, None, e.field, e.message, scope=SCOPE_STORE))
      continue
    if found != expected:
      problems.append(Problem(store.root, None, None, key,
                              f"the store's {kind} features are {found} wide ({parts}), {expected_by} expects "
                              f"{expected}: use the features the model was trained on", scope=SCOPE_STORE))
  return problems
