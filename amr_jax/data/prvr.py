"""PRVR data: caption collections and video/text feature stores in the MS-SL / GMMFormer / AMDNet layouts.

`validate` reports every problem of a collection and its features at once (one line each); `drop_bad` drops them.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import json
import math
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np

from amr_jax.data import annotations
from amr_jax.data.records import MomentRecord

Window = Tuple[float, float]

SPLITS = ('train', 'val', 'test')
# File names of the layouts (MS-SL `dataset/readme.md`, GMMFormer `src/Configs`, AMDNet `Datasets/builder.py`).
CAPTION_FILE = '{collection}{split}.caption.txt'                      # under {root}/{collection}/TextData/
AMDNET_VIDEO_FILE = 'new_clip_vit_32_{collection}_vid_features.hdf5'  # under FeatureData/: {vid: [F, 512]}
AMDNET_TEXT_FILE = 'clip_ViT_B_32_{collection}_query_feat.hdf5'       # under TextData/: {cap_id: [512]}
MSSL_TEXT_FILE = 'roberta_{collection}_query_feat.hdf5'               # under TextData/: {cap_id: [T, 768|1024]}
VIDEO2FRAMES_FILE = 'video2frames.txt'                                # under FeatureData/{visual_feature}/
BIGFILE_PARTS = ('id.txt', 'shape.txt', 'feature.bin')

SCOPE_CAPTION = 'caption'   # one caption-file row (file + line): that row is unusable
SCOPE_TEXT = 'text'         # the text feature of one cap_id: every row with that cap_id is unusable
SCOPE_VIDEO = 'video'       # the feature of one video: the video and all its captions are unusable
SCOPE_STORE = 'store'       # a whole file (missing/empty caption file, unreadable feature file): everything

CHARADES_DIR = os.path.join('data', 'annotations', 'charades-sta')
QVH_DIR = os.path.join('data', 'annotations', 'qvhighlights')
QVH_FILES = {'train': 'highlight_train_release.jsonl', 'val': 'highlight_val_release.jsonl',
             'test': 'highlight_test_with_gt.jsonl'}


def video_id(cap_id: str) -> str:
  """The video of a caption: its id before the first '#' (the whole id when it has none)."""
  return cap_id.split('#', 1)[0]


# ----------------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PrvrProblem:
  """One problem of a collection or its features; `str()` is one line naming the file, ids and field.

  Attributes:
    file: the caption file (row problems) or the feature file / directory.
    field: what is wrong: 'line', 'caption', 'cap_id', 'file', 'video', 'text', 'video2frames', ...
    message: what is wrong with it.
    line: 1-based line of `file` for row problems, else 0.
    vid: the video concerned, or None.
    cap_id: the caption concerned, or None.
    scope: what the problem makes unusable: 'caption', 'text', 'video' or 'store'.
  """
  file: str
  field: str
  message: str
  line: int = 0
  vid: Optional[str] = None
  cap_id: Optional[str] = None
  scope: str = SCOPE_CAPTION

  def __str__(self) -> str:
    where = f'{self.file}:{self.line}' if self.line else self.file
    ids = ' '.join(x for x in (f'vid={self.vid}' if self.vid is not None else '',
                               f'cap_id={self.cap_id}' if self.cap_id is not None else '') if x)
    return f'{where}: {ids + " " if ids else ""}field={self.field}: {self.message}'


class PrvrDataError(ValueError):
  """Problems that stop loading; `problems` holds them and the message lists one per line."""

  def __init__(self, problems: Sequence):
    self.problems = list(problems)
    super().__init__('\n'.join(str(p) for p in self.problems))


class FeatureReadError(Exception):
  """One feature could not be read: the file, the field and what is wrong (becomes a `PrvrProblem`)."""

  def __init__(self, path: str, field: str, message: str):
    self.path, self.field, self.message = str(path), field, message
    super().__init__(f'{self.path}: field={field}: {message}')


# ----------------------------------------------------------------------------------------------------
# Collections
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Caption:
  """One caption of a PRVR collection.

  Attributes:
    cap_id: the caption id; its video is the part before the first '#'.
    text: the caption sentence.
    windows: GT windows in seconds when the source has them (annotation-built collections); used only by the
      planted store. Empty for caption files.
    duration: the video duration in seconds when known, else None.
    source: the file the caption came from (for messages).
    line: 1-based line in `source`.
  """
  cap_id: str
  text: str
  windows: Tuple[Window, ...] = ()
  duration: Optional[float] = None
  source: str = ''
  line: int = 0

  @property
  def vid(self) -> str:
    return video_id(self.cap_id)


class PrvrCollection:
  """The captions of one split and the videos they name (the original's order, see below).

  Videos are ordered by first appearance in the caption list and captions keep list order: `Dataset4PRVR`
  and `read_video_ids` order them so, and the metrics break score ties by this video order.

  Attributes:
    captions: the captions, in file order.
    video_ids: unique videos by first appearance.
    caption_video: [Ncap] int index into video_ids of each caption's video (its GT).
    video_captions: per video, the caption indices in file order.
    name, split: collection and split names ('charades', 'test'), for messages.
    source: the caption file (or annotation file) it came from.
    problems: problems found while reading the caption file (unparsable lines, empty file ...).
  """

  def __init__(self, captions: Iterable[Caption], *, name: str = '', split: str = '', source: str = '',
               problems: Sequence[PrvrProblem] = ()):
    self.captions: List[Caption] = list(captions)
    self.name = name
    self.split = split
    self.source = source
    self.problems: List[PrvrProblem] = list(problems)
    index: Dict[str, int] = {}
    self.video_ids: List[str] = []
    self.video_captions: List[List[int]] = []
    caption_video = []
    for i, caption in enumerate(self.captions):
      vid = caption.vid
      if vid not in index:
        index[vid] = len(self.video_ids)
        self.video_ids.append(vid)
        self.video_captions.append([])
      caption_video.append(index[vid])
      self.video_captions[index[vid]].append(i)
    self.video_index: Dict[str, int] = index
    self.caption_video = np.asarray(caption_video, dtype=np.int64)   # [Ncap]

  def __len__(self) -> int:
    return len(self.captions)

  def __repr__(self) -> str:
    return (f'PrvrCollection({self.name}{self.split}: {len(self.captions)} captions, {len(self.video_ids)} videos'
            f'{", %d problems" % len(self.problems) if self.problems else ""})')

  @property
  def num_videos(self) -> int:
    return len(self.video_ids)

  @property
  def cap_ids(self) -> List[str]:
    return [c.cap_id for c in self.captions]

  def max_captions_per_video(self) -> int:
    return max((len(c) for c in self.video_captions), default=0)

  def durations(self) -> Dict[str, Optional[float]]:
    """vid -> the largest known duration of its captions (None when none is known)."""
    out: Dict[str, Optional[float]] = {}
    for caption in self.captions:
      d = caption.duration
      known = d is not None and math.isfinite(d) and d > 0
      prev = out.get(caption.vid)
      out[caption.vid] = max(prev, d) if (known and prev is not None) else (d if known else prev)
    return out

  def subset(self, keep: Sequence[int]) -> 'PrvrCollection':
    """A collection of the captions at indices `keep` (order kept); reading problems are not carried over."""
    return PrvrCollection([self.captions[i] for i in keep], name=self.name, split=self.split, source=self.source)


def read_caption_file(path, *, name: str = '', split: str = '') -> PrvrCollection:
  """Reads a `{collection}{split}.caption.txt` file; problems are collected, never raised.

  Each non-blank line is `cap_id caption` split at the first run of whitespace (the original splits at the first
  space; a tab-separated file would break it). Blank lines are skipped. Problems (in `collection.problems`):
  missing/unreadable/empty file, a line with one token only (no caption, or not `cap_id caption`), an empty video
  id, a repeated cap_id (the first row is kept, the repeat is reported).
  """
  path = os.fspath(path)
  problems: List[PrvrProblem] = []
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    return PrvrCollection([], name=name, split=split, source=path,
                          problems=[PrvrProblem(path, 'file', 'no such caption file', scope=SCOPE_STORE)])
  except OSError as e:
    return PrvrCollection([], name=name, split=split, source=path,
                          problems=[PrvrProblem(path, 'file', f'cannot read ({e.strerror or e})', scope=SCOPE_STORE)])
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    return PrvrCollection([], name=name, split=split, source=path, problems=[
        PrvrProblem(path, 'file', f'not UTF-8 text (byte {e.start} on line {line})', scope=SCOPE_STORE)])
  captions: List[Caption] = []
  first_line: Dict[str, int] = {}
  for line_no, line in enumerate(text.split('\n'), start=1):
    stripped = line.strip()
    if not stripped:
      continue
    parts = stripped.split(None, 1)
    cap_id = parts[0]
    if len(parts) == 1:
      if '#' in cap_id:
        problems.append(PrvrProblem(path, 'caption', 'empty caption (the line holds only a cap_id)', line=line_no,
                                    vid=video_id(cap_id), cap_id=cap_id))
      else:
        shown = stripped if len(stripped) <= 60 else stripped[:57] + '...'
        problems.append(PrvrProblem(path, 'line', f"unparsable line {shown!r}: expected 'cap_id caption'",
                                    line=line_no))
      continue
    if not video_id(cap_id):
      problems.append(PrvrProblem(path, 'cap_id', f"empty video id in cap_id {cap_id!r} (it starts with '#')",
                                  line=line_no, cap_id=cap_id))
      continue
    if cap_id in first_line:
      problems.append(PrvrProblem(path, 'cap_id', f'duplicate cap_id (first at line {first_line[cap_id]})',
                                  line=line_no, vid=video_id(cap_id), cap_id=cap_id))
      continue
    first_line[cap_id] = line_no
    captions.append(Caption(cap_id, parts[1], source=path, line=line_no))
  if not captions and not problems:
    problems.append(PrvrProblem(path, 'file', 'empty caption file (no captions)', scope=SCOPE_STORE))
  return PrvrCollection(captions, name=name, split=split, source=path, problems=problems)


def caption_file_path(root, collection: str, split: str) -> str:
  """{root}/{collection}/TextData/{collection}{split}.caption.txt."""
  return os.path.join(os.fspath(root), collection, 'TextData', CAPTION_FILE.format(collection=collection,
                                                                                   split=split))


def load_collection(root, collection: str, split: str) -> PrvrCollection:
  """The caption file of `split` in a MS-SL style data root (see `caption_file_path`)."""
  return read_caption_file(caption_file_path(root, collection, split), name=collection, split=split)


def write_caption_file(collection: PrvrCollection, path) -> None:
  """Writes `cap_id caption` lines (newlines inside a caption become spaces)."""
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    for caption in collection.captions:
      f.write(f'{caption.cap_id} {" ".join(caption.text.split())}\n')


# ----------------------------------------------------------------------------------------------------
# Collections from the shipped moment-retrieval annotations
# ----------------------------------------------------------------------------------------------------
def collection_from_records(records: Sequence[MomentRecord], *, name: str, split: str,
                            durations: Optional[Mapping[str, float]] = None) -> PrvrCollection:
  """One caption per record: cap_id `{vid}#{qid}`, the query as text, its windows and duration kept.

  Args:
    records: moment-retrieval records (QVH-style jsonl or Charades-STA txt rows).
    name, split: the collection name and split.
    durations: vid -> duration, used where a record has none (Charades-STA txt has none).
  """
  captions = []
  for r in records:
    duration = r.duration if r.duration is not None else (durations or {}).get(r.vid)
    captions.append(Caption(f'{r.vid}#{r.qid}', r.query, windows=tuple(r.windows), duration=duration,
                            source=r.source, line=r.line))
  return PrvrCollection(captions, name=name, split=split, source=records[0].source if records else '')


def charades_sta_collection(split: str, annotations_dir=CHARADES_DIR) -> PrvrCollection:
  """Charades-STA as PRVR (MS-SL's split): train 12,408 captions / 5,338 videos, test 3,720 / 1,334.

  Captions and windows come from `charades_sta_{split}.txt` (qid = 0-based line index, as the annotation loader
  numbers them); durations from the lighthouse `charades_{split}_release.jsonl` where it has the video.
  """
  if split not in ('train', 'test'):
    raise ValueError(f"Charades-STA PRVR has splits 'train' and 'test', not {split!r}")
  records = annotations.load_annotations(os.path.join(annotations_dir, f'charades_sta_{split}.txt'))
  durations = {}
  jsonl = os.path.join(annotations_dir, f'charades_{split}_release.jsonl')
  if os.path.isfile(jsonl):
    for line in open(jsonl, encoding='utf-8'):
      if line.strip():
        row = json.loads(line)
        durations[row['vid']] = float(row['duration'])
  return collection_from_records(records, name='charades', split=split, durations=durations)


def qvh_collection(split: str, annotations_dir=QVH_DIR) -> PrvrCollection:
  """QVHighlights as PRVR (QVH-PRVR): every query a caption of its video; test = highlight_test_with_gt."""
  if split not in QVH_FILES:
    raise ValueError(f'QVH-PRVR has splits {", ".join(QVH_FILES)}, not {split!r}')
  records = annotations.load_annotations(os.path.join(annotations_dir, QVH_FILES[split]))
  return collection_from_records(records, name='qvh', split=split)


# ----------------------------------------------------------------------------------------------------
# Feature sources
# ----------------------------------------------------------------------------------------------------
class Hdf5Features:
  """An hdf5 file of one dataset per key (vid -> [F, D] frames, or cap_id -> [D] / [T, D])."""

  def __init__(self, path, field: str):
    self.path = os.fspath(path)
    self.field = field
    self._file = None
    self._pid = None

  def __repr__(self) -> str:
    return f'Hdf5Features({self.path!r})'

  def _open(self):
    if self._file is None or self._pid != os.getpid():
      if not os.path.isfile(self.path):
        raise FeatureReadError(self.path, self.field, 'no such feature file')
      try:
        self._file = h5py.File(self.path, 'r')
      except OSError as e:
        raise FeatureReadError(self.path, self.field, f'not a readable hdf5 file ({e})') from None
      self._pid = os.getpid()
    return self._file

  def keys(self) -> List[str]:
    return list(self._open().keys())

  def has(self, key: str) -> bool:
    try:
      return key in self._open()
    except FeatureReadError:
      return False

  def read(self, key: str) -> np.ndarray:
    f = self._open()
    if key not in f:
      raise FeatureReadError(self.path, self.field, 'missing from the feature file')
    node = f[key]
    if not hasattr(node, 'shape'):
      raise FeatureReadError(self.path, self.field, 'is an hdf5 group, not a dataset')
    try:
      array = np.asarray(node[...])
    except (OSError, ValueError, TypeError) as e:
      raise FeatureReadError(self.path, self.field, f'unreadable dataset ({e})') from None
    if array.dtype.kind not in 'fiu':
      raise FeatureReadError(self.path, self.field, f'not a numeric array (dtype {array.dtype})')
    return array

  def length(self, key: str) -> int:
    """Rows of one dataset without reading it."""
    f = self._open()
    if key not in f:
      raise FeatureReadError(self.path, self.field, 'missing from the feature file')
    shape = getattr(f[key], 'shape', ())
    return int(shape[0]) if shape else 1

  def source(self, key: str) -> str:
    del key
    return self.path

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def read_video2frames(path) -> Dict[str, List[str]]:
  """A `video2frames.txt` (a Python dict literal {vid: [frame ids]}; the original eval()s it, we literal_eval it).

  Raises:
    FeatureReadError: missing, unreadable or not a dict of lists.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except FileNotFoundError:
    raise FeatureReadError(path, 'video2frames', 'no such file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise FeatureReadError(path, 'video2frames', f'cannot read ({e})') from None
  try:
    value = ast.literal_eval(text.strip() or '{}')
  except (ValueError, SyntaxError) as e:
    raise FeatureReadError(path, 'video2frames', f'not a Python dict literal ({type(e).__name__})') from None
  if not isinstance(value, dict) or not all(isinstance(v, (list, tuple)) for v in value.values()):
    raise FeatureReadError(path, 'video2frames', 'expected a dict {video_id: [frame_id, ...]}')
  return {str(k): [str(x) for x in v] for k, v in value.items()}


class BigFileFeatures:
  """The MS-SL "BigFile": `id.txt` (frame ids), `shape.txt` (`rows dims`), `feature.bin` (float32 rows).

  With a `video2frames.txt` next to them (or given), `read(vid)` stacks the rows of the video's frames in list
  order; without one, a video is the single row whose id is the video id ([1, D]).
  """

  def __init__(self, directory, video2frames=None, field: str = 'video'):
    self.directory = os.fspath(directory)
    self.field = field
    self._video2frames_path = (os.fspath(video2frames) if video2frames is not None
                               else os.path.join(self.directory, VIDEO2FRAMES_FILE))
    self._loaded = False
    self._error: Optional[FeatureReadError] = None

  def __repr__(self) -> str:
    return f'BigFileFeatures({self.directory!r})'

  def _load(self) -> None:
    if self._loaded:
      if self._error is not None:
        raise self._error
      return
    self._loaded = True
    try:
      self._load_files()
    except FeatureReadError as e:
      self._error = e
      raise

  def _load_files(self) -> None:
    d = self.directory
    for part in BIGFILE_PARTS:
      if not os.path.isfile(os.path.join(d, part)):
        raise FeatureReadError(os.path.join(d, part), self.field, 'missing BigFile part')
    try:
      with open(os.path.join(d, 'shape.txt'), encoding='utf-8') as f:
        rows, dims = (int(x) for x in f.readline().split())
    except (ValueError, OSError):
      raise FeatureReadError(os.path.join(d, 'shape.txt'), self.field, "expected 'rows dims'") from None
    with open(os.path.join(d, 'id.txt'), 'rb') as f:
      names = [n.decode('ISO-8859-1') for n in f.read().strip().split()]
    if len(names) != rows:
      raise FeatureReadError(os.path.join(d, 'id.txt'), self.field,
                             f'{len(names)} ids but shape.txt says {rows} rows')
    size = os.path.getsize(os.path.join(d, 'feature.bin'))
    if size != rows * dims * 4:
      raise FeatureReadError(os.path.join(d, 'feature.bin'), self.field,
                             f'{size} bytes, expected {rows} x {dims} float32 = {rows * dims * 4}')
    self.rows, self.dims = rows, dims
    self.name2index = {n: i for i, n in enumerate(names)}
    self._matrix = (np.memmap(os.path.join(d, 'feature.bin'), dtype=np.float32, mode='r', shape=(rows, dims))
                    if rows * dims else np.zeros((rows, dims), np.float32))
    self.video2frames = (read_video2frames(self._video2frames_path)
                         if os.path.isfile(self._video2frames_path) else None)

  def _rows(self, key: str) -> List[int]:
    self._load()
    if self.video2frames is None:
      if key not in self.name2index:
        raise FeatureReadError(os.path.join(self.directory, 'id.txt'), self.field, 'id not in the BigFile')
      return [self.name2index[key]]
    if key not in self.video2frames:
      raise FeatureReadError(self._video2frames_path, 'video2frames', 'video not in video2frames')
    frames = self.video2frames[key]
    missing = [x for x in frames if x not in self.name2index]
    if missing:
      raise FeatureReadError(os.path.join(self.directory, 'id.txt'), self.field,
                             f'{len(missing)} of {len(frames)} frame ids not in the BigFile (first: {missing[0]})')
    return [self.name2index[x] for x in frames]

  def has(self, key: str) -> bool:
    try:
      self._rows(key)
      return True
    except FeatureReadError:
      return False

  def read(self, key: str) -> np.ndarray:
    rows = self._rows(key)
    return np.asarray(self._matrix[rows], dtype=np.float32)    # [F, D]

  def length(self, key: str) -> int:
    return len(self._rows(key))

  def source(self, key: str) -> str:
    del key
    return self.directory

  def close(self) -> None:
    pass


def open_features(path, field: str):
  """An `Hdf5Features` for a file, a `BigFileFeatures` for a directory."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return BigFileFeatures(path, field=field)
  return Hdf5Features(path, field)


class PrvrStore:
  """Video frames per vid and text features per cap_id, as stored (no normalisation; the batches do that).

  `video(vid)` is float32 [F, Dv]; `text(cap_id)` is float32 [Dq] (sentence) or [T, Dq] (tokens).
  """

  def __init__(self, video, text):
    """Opens a store from two sources: paths (hdf5 file or BigFile directory) or feature objects."""
    self.video_source = open_features(video, 'video') if isinstance(video, (str, os.PathLike)) else video
    self.text_source = open_features(text, 'text') if isinstance(text, (str, os.PathLike)) else text

  def __repr__(self) -> str:
    return f'PrvrStore(video={self.video_source!r}, text={self.text_source!r})'

  @classmethod
  def open(cls, root, collection: str, *, visual_feature: Optional[str] = None,
           text_feature: Optional[str] = None) -> 'PrvrStore':
    """The store of a MS-SL style root: `{root}/{collection}/{FeatureData,TextData}`.

    Args:
      root: the data root.
      collection: 'tvr', 'activitynet', 'charades', ...
      visual_feature: a BigFile directory name under FeatureData/ ('i3d_resnet'); None = the AMDNet hdf5
        (`new_clip_vit_32_{collection}_vid_features.hdf5`), else the only BigFile directory there.
      text_feature: a file name under TextData/; None = the AMDNet CLIP hdf5 if present, else the MS-SL RoBERTa one.

    Raises:
      PrvrDataError: no video or text features found (one line naming what was looked for).
    """
    base = os.path.join(os.fspath(root), collection)
    feature_dir, text_dir = os.path.join(base, 'FeatureData'), os.path.join(base, 'TextData')
    if visual_feature is not None:
      video = os.path.join(feature_dir, visual_feature)
    else:
      video = os.path.join(feature_dir, AMDNET_VIDEO_FILE.format(collection=collection))
      if not os.path.isfile(video):
        dirs = sorted(d for d in (os.listdir(feature_dir) if os.path.isdir(feature_dir) else [])
                      if os.path.isfile(os.path.join(feature_dir, d, 'feature.bin')))
        if len(dirs) != 1:
          raise PrvrDataError([PrvrProblem(feature_dir, 'video', f'no {os.path.basename(video)} and '
                                           f'{len(dirs)} BigFile directories ({", ".join(dirs) or "none"}); '
                                           'name one with visual_feature')])
        video = os.path.join(feature_dir, dirs[0])
    if text_feature is not None:
      text = os.path.join(text_dir, text_feature)
    else:
      candidates = [os.path.join(text_dir, p.format(collection=collection))
                    for p in (AMDNET_TEXT_FILE, MSSL_TEXT_FILE)]
      text = next((p for p in candidates if os.path.isfile(p)), None)
      if text is None:
        raise PrvrDataError([PrvrProblem(text_dir, 'text', 'no text features (looked for '
                                         + ', '.join(os.path.basename(p) for p in candidates) + ')')])
    return cls(video, text)

  def video(self, vid: str) -> np.ndarray:
    return np.asarray(self.video_source.read(vid), dtype=np.float32)

  def text(self, cap_id: str) -> np.ndarray:
    return np.asarray(self.text_source.read(cap_id), dtype=np.float32)

  def num_frames(self, vid: str) -> int:
    return self.video_source.length(vid)

  def has_video(self, vid: str) -> bool:
    return self.video_source.has(vid)

  def has_text(self, cap_id: str) -> bool:
    return self.text_source.has(cap_id)

  def close(self) -> None:
    self.video_source.close()
    self.text_source.close()


# ----------------------------------------------------------------------------------------------------
# Writers (planted store, tests, converters)
# ----------------------------------------------------------------------------------------------------
def write_hdf5(path, arrays: Mapping[str, np.ndarray]) -> None:
  """One float32 dataset per key (no timestamps, so equal arrays give equal files)."""
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, 'w', track_order=False) as f:
    for key, array in arrays.items():
      f.create_dataset(key, data=np.asarray(array, dtype=np.float32), track_times=False)


def write_bigfile(directory, videos: Mapping[str, np.ndarray], frame_id: str = '{vid}_{k}') -> None:
  """A BigFile of every frame of `videos` (vid -> [F, D]) plus the `video2frames.txt` that maps them back."""
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  names, video2frames, dims = [], {}, None
  with open(os.path.join(directory, 'feature.bin'), 'wb') as f:
    for vid, frames in videos.items():
      frames = np.asarray(frames, dtype=np.float32)
      dims = frames.shape[1] if dims is None else dims
      if frames.shape[1] != dims:
        raise ValueError(f'{vid}: width {frames.shape[1]} differs from {dims}')
      ids = [frame_id.format(vid=vid, k=k) for k in range(len(frames))]
      names.extend(ids)
      video2frames[vid] = ids
      f.write(np.ascontiguousarray(frames, dtype='<f4').tobytes())
  with open(os.path.join(directory, 'id.txt'), 'w', encoding='ISO-8859-1') as f:
    f.write(' '.join(names))
  with open(os.path.join(directory, 'shape.txt'), 'w', encoding='utf-8') as f:
    f.write(f'{len(names)} {dims or 0}')
  with open(os.path.join(directory, VIDEO2FRAMES_FILE), 'w', encoding='utf-8') as f:
    f.write(repr(video2frames))


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------
def _check_array(array: np.ndarray, kind: str) -> List[Tuple[str, str]]:
  """(field, message) problems of one stored array: rank, emptiness, NaN/Inf."""
  out = []
  if kind == 'video':
    if array.ndim != 2:
      return [('video', f'wrong rank: shape {array.shape}, expected [frames, dim]')]
  elif array.ndim not in (1, 2):
    return [('text', f'wrong rank: shape {array.shape}, expected [dim] (sentence) or [tokens, dim]')]
  if array.size == 0:
    return [(kind, f'empty array, shape {array.shape}')]
  if array.dtype.kind == 'f':
    finite = np.isfinite(array)
    if not finite.all():
      out.append((kind, f'{int(array.size - np.count_nonzero(finite))} NaN/Inf value(s)'))
  return out


def _most_common(values) -> Optional[int]:
  counts = collections.Counter(values)
  return counts.most_common(1)[0][0] if counts else None


def validate(collection: PrvrCollection, store: Optional[PrvrStore], *, video_dim: Optional[int] = None,
             text_dim: Optional[int] = None) -> List[PrvrProblem]:
  """Every problem of a collection and its features, each one line (file, line, vid/cap_id, field).

  Caption-file problems come first (from reading: missing/empty file, unparsable lines, empty captions, duplicate
  cap_ids), then per video (missing, unreadable, wrong rank, empty, NaN/Inf, a width other than `video_dim` or the
  store's most common one), then per caption (the same checks of its text feature).

  Args:
    collection: the split.
    store: its features, or None for caption-only checks.
    video_dim, text_dim: the widths a model expects; None = the most common width in the store.
  """
  problems = list(collection.problems)
  if store is None:
    return problems
  if collection.captions and not os.path.exists(_source_path(store.video_source)):
    problems.append(PrvrProblem(_source_path(store.video_source), 'video',
                                f'no such feature file (needed by {collection.num_videos} videos)',
                                scope=SCOPE_STORE))
    video_results = []
  else:
    video_results = [(vid, _read(store.video_source, vid)) for vid in collection.video_ids]
    problems.extend(_store_problem(video_results, store.video_source))
  if collection.captions and not os.path.exists(_source_path(store.text_source)):
    problems.append(PrvrProblem(_source_path(store.text_source), 'text',
                                f'no such feature file (needed by {len(collection)} captions)', scope=SCOPE_STORE))
    text_results = []
  else:
    text_results = [(c.cap_id, _read(store.text_source, c.cap_id)) for c in collection.captions]
    problems.extend(_store_problem(text_results, store.text_source))
  if any(p.scope == SCOPE_STORE and p.field in ('video', 'text') for p in problems[len(collection.problems):]):
    return problems
  problems.extend(_feature_problems(video_results, store.video_source, 'video', video_dim, SCOPE_VIDEO))
  problems.extend(_feature_problems(text_results, store.text_source, 'text', text_dim, SCOPE_TEXT))
  return problems


def _source_path(source) -> str:
  return getattr(source, 'path', None) or getattr(source, 'directory', '')


def _read(source, key: str):
  """(array, None) or (None, FeatureReadError)."""
  try:
    return source.read(key), None
  except FeatureReadError as e:
    return None, e


def _store_problem(results, source) -> List[PrvrProblem]:
  """A whole-file problem (an unreadable hdf5, a broken BigFile) once, instead of once per key."""
  errors = [e for _, (_, e) in results if e is not None]
  if results and len(errors) == len(results) and errors[0].message not in ('missing from the feature file',
                                                                           'id not in the BigFile',
                                                                           'video not in video2frames'):
    e = errors[0]
    return [PrvrProblem(e.path, e.field, e.message, scope=SCOPE_STORE)]
  return []


def _feature_problems(results, source, kind: str, expected: Optional[int], scope: str) -> List[PrvrProblem]:
  problems = []
  widths = [a.shape[-1] for _, (a, _) in results if a is not None and a.ndim >= 1]
  reference = expected if expected is not None else _most_common(widths)
  for key, (array, error) in results:
    vid = key if kind == 'video' else video_id(key)
    cap_id = None if kind == 'video' else key
    if error is not None:
      problems.append(PrvrProblem(error.path, error.field, error.message, vid=vid, cap_id=cap_id, scope=scope))
      continue
    issues = _check_array(array, kind)
    for field, message in issues:
      problems.append(PrvrProblem(source.source(key), field, message, vid=vid, cap_id=cap_id, scope=scope))
    if not issues and reference is not None and array.shape[-1] != reference:
      whose = 'the model' if expected is not None else "the store's (most common)"
      problems.append(PrvrProblem(source.source(key), kind, f'width {array.shape[-1]} differs from {whose} '
                                  f'{reference}', vid=vid, cap_id=cap_id, scope=scope))
  return problems


def drop_bad(collection: PrvrCollection,
             problems: Sequence[PrvrProblem]) -> Tuple[PrvrCollection, List[Caption]]:
  """Splits a collection into (kept collection, dropped captions) by the scopes of `problems`.

  Caption problems drop their row (file + line), text problems every row with that cap_id, video problems the
  video with all its captions, store problems everything. A video whose captions are all dropped leaves the
  video set too (the video set is the videos of the remaining captions, as in the original).
  """
  if any(p.scope == SCOPE_STORE for p in problems):
    return collection.subset([]), list(collection.captions)
  bad_rows = {(p.file, p.line) for p in problems if p.scope == SCOPE_CAPTION and p.line}
  bad_caps = {p.cap_id for p in problems if p.scope in (SCOPE_TEXT, SCOPE_CAPTION) and not p.line and p.cap_id}
  bad_vids = {p.vid for p in problems if p.scope == SCOPE_VIDEO}
  keep, dropped = [], []
  for i, c in enumerate(collection.captions):
    if (c.source, c.line) in bad_rows or c.cap_id in bad_caps or c.vid in bad_vids:
      dropped.append(c)
    else:
      keep.append(i)
  return collection.subset(keep), dropped


def summarize(collection: PrvrCollection, problems: Sequence[PrvrProblem]) -> str:
  """One line: problem counts by field and how many captions / videos they make unusable."""
  kept, dropped = drop_bad(collection, problems)
  if not problems:
    return f'no problems in {len(collection)} captions, {collection.num_videos} videos'
  fields = ', '.join(f'{k} {v}' for k, v in sorted(collections.Counter(p.field for p in problems).items()))
  return (f'{len(problems)} problem(s) ({fields}) in {len(collection)} captions, {collection.num_videos} videos; '
          f'{len(dropped)} captions and {collection.num_videos - kept.num_videos} videos affected')
