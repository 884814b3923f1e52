"""Weak-MR data: (vid, duration, [s, e], sentence) samples from Charades-STA / CPL / ActivityNet Captions files,
I3D/C3D video features (per-video npy/npz or one hdf5) average-pooled as CPL, and one-pass validation.

Samples are `MomentRecord`s (query = the sentence, one window = the GT, used only for evaluation). Pooling follows
CPL's `datasets/base.py` (fixture cpl_reference README §2, quirk Q27); problems format as `validate.Problem`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from amr_jax.data import annotations as ann_lib
from amr_jax.data.features import FeatureError, FeaturePart, read_array
from amr_jax.data.records import MomentRecord
from amr_jax.data.validate import SCOPE_RECORD, SCOPE_VIDEO, Problem, drop_bad
from amr_jax.data.vocab import TextEncoder

try:                                      # optional: one-file feature stores
  import h5py                             # pylint: disable=g-import-not-at-top
except ImportError:                       # pragma: no cover - depends on the environment
  h5py = None

FORMATS = ('charades_txt', 'jsonl', 'cpl_json', 'activitynet_json')
HDF5_SUFFIXES = ('.hdf5', '.h5')
ACTIVITYNET_HDF5_KEY = 'c3d_features'     # sub_activitynet_v1-3.c3d.hdf5 stores f[vid]['c3d_features']
NPZ_KEYS = ('features', 'feats', 'arr_0')


class WeakDataError(ValueError):
  """Weak-MR data that cannot be used; the message is one line per problem (file, id and field named)."""

  def __init__(self, what: str, problems: Sequence[Union[Problem, str]]):
    self.problems = list(problems)
    lines = [str(p) for p in self.problems]
    head = lines[0] if len(lines) == 1 else f'{what}: {len(lines)} data problem(s)'
    super().__init__(head if len(lines) == 1 else head + ':\n' + '\n'.join(lines))


# ----------------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------------
def detect_weak_format(path: Union[str, os.PathLike]) -> str:
  """One of FORMATS, from the suffix and the first characters of the file."""
  path = os.fspath(path)
  if path.endswith('.txt'):
    return 'charades_txt'
  if path.endswith('.jsonl'):
    return 'jsonl'
  with open(path, encoding='utf-8') as f:
    head = f.read(4096).lstrip()
  if head.startswith('['):
    return 'cpl_json'
  if head.startswith('{'):
    first_line = head.split('\n', 1)[0].strip()
    try:                                  # a complete JSON object on the first line: jsonl
      json.loads(first_line)
      if '\n' in head.strip():
        return 'jsonl'
    except ValueError:
      pass
    return 'activitynet_json' if path.endswith('.json') else 'jsonl'
  return 'charades_txt'


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Rows:
  """Collects row problems of one json file (or raises the first one when no list is given)."""

  def __init__(self, path: str, problems: Optional[List[Problem]]):
    self.path = path
    self.problems = problems

  def fail(self, row: int, qid, vid, field: str, message: str) -> None:
    problem = Problem(self.path, qid, vid, field, message, line=row, scope=SCOPE_RECORD)
    if self.problems is None:
      raise WeakDataError(self.path, [problem])
    self.problems.append(problem)


def _window(value: Any) -> Optional[Tuple[float, float]]:
  if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(x) for x in value):
    return float(value[0]), float(value[1])
  return None


def _load_cpl_json(path: str, data: Any, rows: _Rows) -> List[MomentRecord]:
  """CPL's `data/*/*.json`: a list of [vid, duration, [start, end], sentence]; qid = 0-based row index."""
  if not isinstance(data, list):
    rows.fail(0, None, None, 'file', f'expected a JSON list of [vid, duration, [s, e], sentence], got '
              f'{type(data).__name__}')
    return []
  records = []
  for index, row in enumerate(data):
    line = index + 1
    if not (isinstance(row, list) and len(row) == 4):
      rows.fail(line, index, None, 'row', f'expected [vid, duration, [s, e], sentence], got {str(row)[:60]}')
      continue
    vid, duration, window, sentence = row
    vid_name = vid if isinstance(vid, str) else None
    bad = False
    if not (isinstance(vid, str) and vid):
      rows.fail(line, index, vid_name, 'vid', f'expected a non-empty string, got {vid!r}')
      bad = True
    if isinstance(duration, str):
      try:
        duration = float(duration)      # the original calls float(duration)
      except ValueError:
        pass
    if not _number(duration):
      rows.fail(line, index, vid_name, 'duration', f'expected a number, got {duration!r}')
      bad = True
    span = _window(window)
    if span is None:
      rows.fail(line, index, vid_name, 'timestamps', f'expected [start, end] numbers, got {window!r}')
      bad = True
    if not isinstance(sentence, str):
      rows.fail(line, index, vid_name, 'sentence', f'expected a string, got {type(sentence).__name__}')
      bad = True
    if not bad:
      records.append(MomentRecord(qid=index, vid=vid, query=sentence, duration=float(duration),
                                  windows=(span,), source=path, line=line))
  return records


def _load_activitynet_json(path: str, data: Any, rows: _Rows) -> List[MomentRecord]:
  """ActivityNet Captions: {vid: {duration, timestamps: [[s, e], ...], sentences: [...]}}; qid = running index
  over the file (videos in file order, sentences in order), line = qid + 1."""
  if not isinstance(data, dict):
    rows.fail(0, None, None, 'file', f'expected a JSON object {{vid: {{duration, timestamps, sentences}}}}, got '
              f'{type(data).__name__}')
    return []
  records, qid = [], 0
  for vid, entry in data.items():
    if not isinstance(entry, dict):
      rows.fail(qid + 1, qid, vid, 'row', 'expected an object with duration, timestamps, sentences')
      qid += 1
      continue
    timestamps, sentences = entry.get('timestamps'), entry.get('sentences')
    duration = entry.get('duration')
    if not isinstance(timestamps, list) or not isinstance(sentences, list):
      rows.fail(qid + 1, qid, vid, 'timestamps' if not isinstance(timestamps, list) else 'sentences',
                'expected a list')
      qid += 1
      continue
    if len(timestamps) != len(sentences):
      rows.fail(qid + 1, qid, vid, 'sentences', f'{len(sentences)} sentences for {len(timestamps)} timestamps')
    for window, sentence in zip(timestamps, sentences):
      span = _window(window)
      bad = False
      if not _number(duration):
        rows.fail(qid + 1, qid, vid, 'duration', f'expected a number, got {duration!r}')
        bad = True
      if span is None:
        rows.fail(qid + 1, qid, vid, 'timestamps', f'expected [start, end] numbers, got {window!r}')
        bad = True
      if not isinstance(sentence, str):
        rows.fail(qid + 1, qid, vid, 'sentence', f'expected a string, got {type(sentence).__name__}')
        bad = True
      if not bad:
        records.append(MomentRecord(qid=qid, vid=vid, query=sentence, duration=float(duration), windows=(span,),
                                    source=path, line=qid + 1))
      qid += 1
  return records


def load_weak_annotations(path: Union[str, os.PathLike], *, durations: Optional[Mapping[str, float]] = None,
                          problems: Optional[List[Problem]] = None, fmt: str = 'auto',
                          qid_offset: int = 0) -> List[MomentRecord]:
  """Weak-MR samples of one annotation file, in file order.

  Formats (`detect_weak_format`): Charades-STA txt `VID s e##sentence` (qid = line index, no duration),
  QVH-style jsonl (the lighthouse `*_release.jsonl`), CPL json rows `[vid, duration, [s, e], sentence]`
  (qid = row index, `line` = row index + 1) and ActivityNet Captions json (qid = running sentence index).

  Args:
    path: the annotation file.
    durations: vid -> seconds, filled in where a row has none (Charades txt); see `read_durations`.
    problems: when given, malformed rows are appended here (and skipped) instead of raising.
    fmt: one of FORMATS, or 'auto'.
    qid_offset: added to every qid (the txt and CPL json qids of a train and a test file both start at 0).

  Raises:
    WeakDataError: unreadable file or (with problems=None) the first malformed row, in one line.
  """
  path = os.fspath(path)
  try:
    fmt = detect_weak_format(path) if fmt == 'auto' else fmt
    if fmt not in FORMATS:
      raise WeakDataError(path, [f'{path}: field=format: unknown format {fmt!r} (known: {", ".join(FORMATS)})'])
    if fmt in ('charades_txt', 'jsonl'):
      try:
        records = ann_lib.load_annotations(path)
      except ann_lib.AnnotationError as e:
        problem = Problem(e.path, e.qid, None, e.field, e.message, line=e.line)
        if problems is None:
          raise WeakDataError(path, [problem]) from None
        problems.append(problem)
        return []
    else:
      with open(path, encoding='utf-8') as f:
        try:
          data = json.load(f)
        except json.JSONDecodeError as e:
          raise WeakDataError(path, [f'{path}:{e.lineno}: field=file: invalid JSON ({e.msg} at column {e.colno})']
                              ) from None
      rows = _Rows(path, problems)
      records = (_load_cpl_json if fmt == 'cpl_json' else _load_activitynet_json)(path, data, rows)
  except FileNotFoundError:
    raise WeakDataError(path, [f'{path}: field=file: no such annotation file']) from None
  except (OSError, UnicodeDecodeError) as e:
    raise WeakDataError(path, [f'{path}: field=file: unreadable ({type(e).__name__}: {e})']) from None
  if durations:
    records = [r.replace(duration=float(durations[r.vid])) if r.duration is None and r.vid in durations else r
               for r in records]
  if qid_offset:
    records = [r.replace(qid=r.qid + qid_offset) for r in records]
  return records


def load_weak_many(paths, **kw) -> List[MomentRecord]:
  """`load_weak_annotations` over several files (comma-separated string or list), concatenated in order."""
  records = []
  for path in ann_lib.split_paths(paths):
    records.extend(load_weak_annotations(path, **kw))
  return records


def read_durations(paths) -> Dict[str, float]:
  """vid -> duration (s) from annotation files that have durations (jsonl, CPL json, ActivityNet json)."""
  out: Dict[str, float] = {}
  for record in load_weak_many(paths):
    if record.duration is not None:
      out.setdefault(record.vid, float(record.duration))
  return out


# ----------------------------------------------------------------------------------------------------
# Video features
# ----------------------------------------------------------------------------------------------------
POOLING = ('cpl', 'uniform')


def pool_clips(frames: np.ndarray, num_clips: int, mode: str = 'cpl') -> np.ndarray:
  """float32 [num_clips, D]: average pooling of [T, D] raw clip features to `num_clips` clips.

  'cpl' (the original, Q27): boundaries b_j = round(j / n * T) (float64, numpy round = half to even), those >= T
  set to T - 1; clip j is the mean of raw rows [b_j, b_{j+1}), or raw row b_j alone when the two are equal. So when
  T > n the last raw row enters only through an empty last interval, and when T < n single rows repeat.
  'uniform': b_j = floor(j * T / n) with b_n = T, so every raw row is used once when T >= n; clip j is the mean of
  rows [b_j, max(b_{j+1}, b_j + 1)).
  """
  if mode not in POOLING:
    raise ValueError(f'unknown pooling {mode!r} (known: {", ".join(POOLING)})')
  frames = np.asarray(frames)
  length = len(frames)
  if mode == 'uniform':
    bounds = (np.arange(0, num_clips + 1) * length) // num_clips
    return np.stack([frames[s:max(e, s + 1)].mean(axis=0) for s, e in zip(bounds[:-1], bounds[1:])], 0)
  bounds = np.arange(0, num_clips + 1) / num_clips * length
  bounds = np.round(bounds).astype(np.int64)
  bounds[bounds >= length] = length - 1
  out = []
  for j in range(num_clips):
    s, e = bounds[j], bounds[j + 1]
    out.append(frames[s] if s == e else frames[s:e].mean(axis=0))
  return np.stack(out, 0)


class WeakFeatureStore:
  """Raw per-video clip features [T, D] from a directory of `{vid}.npy` / `{vid}.npz` files or one hdf5 file.

  hdf5: `f[vid]` is the [T, D] dataset (CPL's Charades I3D file) or a group holding `hdf5_key` (ActivityNet C3D:
  'c3d_features'; with 'auto' the group's only dataset, else 'c3d_features'). Arrays are returned as float32, as
  the original `np.asarray(...).astype(np.float32)`.
  """

  def __init__(self, path: Union[str, os.PathLike], *, hdf5_key: str = 'auto', npz_key: str = 'auto'):
    self.path = os.fspath(path)
    self.hdf5_key = hdf5_key
    self.npz_key = npz_key
    self._h5 = None
    if self.path.endswith(HDF5_SUFFIXES):
      if not os.path.isfile(self.path):
        raise WeakDataError(self.path, [f'{self.path}: field=features: no such hdf5 file'])
      if h5py is None:
        raise WeakDataError(self.path, [f'{self.path}: field=features: reading hdf5 needs the h5py package'])
      self.kind = 'hdf5'
    elif os.path.isdir(self.path):
      self.kind = 'dir'
    else:
      raise WeakDataError(self.path, [f'{self.path}: field=features: not a feature directory or .hdf5/.h5 file'])

  def __repr__(self) -> str:
    return f'WeakFeatureStore({self.path!r}, kind={self.kind!r})'

  def _file(self):
    if self._h5 is None:
      try:
        self._h5 = h5py.File(self.path, 'r')
      except OSError as e:
        raise WeakDataError(self.path, [f'{self.path}: field=features: unreadable hdf5 ({e})']) from None
    return self._h5

  def close(self) -> None:
    if self._h5 is not None:
      self._h5.close()
      self._h5 = None

  def location(self, vid: str) -> str:
    """Where `raw(vid)` reads from (for messages)."""
    if self.kind == 'hdf5':
      return f'{self.path}[{vid}]'
    npy = os.path.join(self.path, f'{vid}.npy')
    npz = os.path.join(self.path, f'{vid}.npz')
    return npz if not os.path.isfile(npy) and os.path.isfile(npz) else npy

  def has(self, vid: str) -> bool:
    if self.kind == 'hdf5':
      return vid in self._file()
    return os.path.isfile(os.path.join(self.path, f'{vid}.npy')) or os.path.isfile(
        os.path.join(self.path, f'{vid}.npz'))

  def raw(self, vid: str) -> np.ndarray:
    """float32 [T, D] as stored.

    Raises:
      WeakDataError: missing video, unreadable file, missing key, or a non-numeric array (one line).
    """
    where = self.location(vid)

    def fail(message: str) -> WeakDataError:
      return WeakDataError(where, [Problem(where, None, vid, 'features', message, scope=SCOPE_VIDEO)])

    if self.kind == 'hdf5':
      f = self._file()
      if vid not in f:
        raise fail('missing video')
      node = f[vid]
      if isinstance(node, h5py.Group):
        names = [k for k in node.keys() if isinstance(node[k], h5py.Dataset)]
        key = self.hdf5_key
        if key == 'auto':
          key = names[0] if len(names) == 1 else ACTIVITYNET_HDF5_KEY
        if key not in node:
          raise fail(f'group has no dataset {key!r} (datasets: {", ".join(names) or "none"})')
        node = node[key]
      try:
        array = np.asarray(node)
      except (OSError, ValueError, TypeError) as e:
        raise fail(f'unreadable dataset ({type(e).__name__}: {e})') from None
    else:
      keys = NPZ_KEYS if self.npz_key == 'auto' else (self.npz_key,)
      part = FeaturePart('features', '', '{key}.npz' if where.endswith('.npz') else '{key}.npy',
                         keys if where.endswith('.npz') else (), rank=2)
      try:
        array = read_array(where, part)
      except FeatureError as e:
        raise fail(e.message) from None
    if array.dtype.kind not in 'fiu':
      raise fail(f'not a numeric array (dtype {array.dtype})')
    return array.astype(np.float32)

  def pooled(self, vid: str, num_clips: int, mode: str = 'cpl') -> np.ndarray:
    """float32 [num_clips, D]: `pool_clips(raw(vid), num_clips, mode)`."""
    return pool_clips(self.raw(vid), num_clips, mode)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------
def _check_video(store: WeakFeatureStore, vid: str) -> Tuple[Optional[Tuple[int, ...]], List[Tuple[str, str]]]:
  """(shape or None, [(field, message)]) of one video's features."""
  try:
    array = store.raw(vid)
  except WeakDataError as e:
    problem = e.problems[0]
    return None, [(problem.field, problem.message) if isinstance(problem, Problem) else ('features', str(problem))]
  found = []
  if array.ndim != 2:
    return tuple(array.shape), [('features', f'wrong rank: shape {array.shape}, expected (T, D)')]
  if array.shape[0] == 0:
    found.append(('features', f'no clips, shape {array.shape}'))
  finite = np.isfinite(array)
  if not finite.all():
    found.append(('features', f'{int(array.size - np.count_nonzero(finite))} NaN/Inf value(s)'))
  return tuple(array.shape), found


def validate_weak(records: Sequence[MomentRecord], store: Optional[WeakFeatureStore] = None,
                  encoder: Optional[TextEncoder] = None, *, need_labels: bool = False,
                  frame_dim: Optional[int] = None, window_past_duration: str = 'keep',
                  num_threads: int = 4) -> List[Problem]:
  """Every problem of a weak-MR split in one pass (nothing stops at the first).

  Record checks: empty sentence; no vocabulary word left after tokenisation (the original crashes on it, so the
  record must go); repeated qid. With `need_labels` (evaluation): missing / non-positive / non-finite duration;
  window non-finite, negative start, start >= end; with window_past_duration='problem' also an end past the
  duration (the original keeps those: 'keep').
  Feature checks per vid: missing or unreadable, wrong rank, no clips, NaN/Inf, width != frame_dim (or, without
  frame_dim, != the most common width).

  Returns:
    Record problems in record order, then feature problems in vid order.
  """
  if window_past_duration not in ('keep', 'problem'):
    raise ValueError(f"window_past_duration must be 'keep' or 'problem', got {window_past_duration!r}")
  problems: List[Problem] = []
  first_seen: Dict[Any, MomentRecord] = {}
  for r in records:
    def add(field, message, r=r):
      problems.append(Problem(r.source, r.qid, r.vid, field, message, line=r.line, scope=SCOPE_RECORD))
    if not r.query.strip():
      add('sentence', 'empty sentence')
    elif encoder is not None and not encoder.encode(r.query).ids:
      add('sentence', f'no vocabulary word left after tokenisation: {r.query[:60]!r}')
    if r.qid in first_seen:
      first = first_seen[r.qid]
      add('qid', f'duplicate qid (first at {first.source}:{first.line})')
    else:
      first_seen[r.qid] = r
    if not need_labels:
      continue
    duration = r.duration
    duration_ok = duration is not None and math.isfinite(duration) and duration > 0
    if duration is None:
      add('duration', 'missing duration (Charades txt: pass durations, e.g. read_durations(the *_release.jsonl))')
    elif not duration_ok:
      add('duration', f'duration {duration} is not a positive number')
    if len(r.windows) != 1:
      add('timestamps', f'expected one GT window, got {len(r.windows)}')
      continue
    start, end = r.windows[0]
    if not (math.isfinite(start) and math.isfinite(end)):
      add('timestamps', f'non-finite window [{start}, {end}]')
      continue
    if start < 0:
      add('timestamps', f'negative start {start:g}')
    if start >= end:
      add('timestamps', f'start {start:g} >= end {end:g}')
    if window_past_duration == 'problem' and duration_ok and end > duration + 1e-6:
      add('timestamps', f'ends at {end:g}s, past the duration {duration:g}s')
  if store is not None:
    problems.extend(_check_features(records, store, frame_dim=frame_dim, num_threads=num_threads))
  return problems


def _check_features(records: Sequence[MomentRecord], store: WeakFeatureStore, *, frame_dim: Optional[int],
                    num_threads: int) -> List[Problem]:
  by_vid: Dict[str, List[MomentRecord]] = collections.OrderedDict()
  for r in records:
    by_vid.setdefault(r.vid, []).append(r)
  vids = list(by_vid)
  if store.kind == 'dir' and num_threads > 1 and len(vids) > 64:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      results = list(pool.map(lambda v: _check_video(store, v), vids, chunksize=32))
  else:                                   # h5py serialises reads anyway
    results = [_check_video(store, v) for v in vids]
  widths = collections.Counter(shape[1] for shape, _ in results if shape is not None and len(shape) == 2)
  reference = frame_dim if frame_dim is not None else (widths.most_common(1)[0][0] if widths else None)
  problems = []
  for vid, (shape, found) in zip(vids, results):
    where = store.location(vid)
    for field, message in found:
      problems.append(Problem(where, None, vid, field, f'{message} (needed by {len(by_vid[vid])} sample(s))',
                              scope=SCOPE_VIDEO))
    if shape is not None and len(shape) == 2 and reference is not None and shape[1] != reference:
      source = 'the configured frame_dim' if frame_dim is not None else "the store's most common width"
      problems.append(Problem(where, None, vid, 'features', f'width {shape[1]} differs from {source} {reference}',
                              scope=SCOPE_VIDEO))
  return problems


def preflight(records: Sequence[MomentRecord], store: Optional[WeakFeatureStore], encoder: Optional[TextEncoder],
              *, what: str, need_labels: bool, drop: bool, frame_dim: Optional[int] = None,
              window_past_duration: str = 'keep', log=sys.stderr) -> List[MomentRecord]:
  """Validates a split; with `drop` returns the records no problem concerns (saying how many went), else raises.

  Raises:
    WeakDataError: problems and drop=False (every problem listed, one line each), or nothing left after dropping.
  """
  problems = validate_weak(records, store, encoder, need_labels=need_labels, frame_dim=frame_dim,
                           window_past_duration=window_past_duration)
  if not problems:
    return list(records)
  if not drop:
    raise WeakDataError(f'{what} (set data.drop_bad=True to drop the affected samples)', problems)
  kept, dropped = drop_bad(records, problems)
  if log is not None:
    print(f'[{what}] dropped {len(dropped)} of {len(records)} samples ({len(problems)} problem(s)); first: '
          + (str(problems[0]) if problems else ''), file=log)
  if not kept:
    raise WeakDataError(what, [f'{what}: every sample was dropped by validation ({len(problems)} problem(s))'])
  return kept

