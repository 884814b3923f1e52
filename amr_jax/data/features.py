"""Feature stores: read precomputed video/text features in the official QVHighlights/AMR or lighthouse layouts.

Normalisation and length alignment follow amr.md §1: every stored vector is L2-normalised along its last axis
(norm + 1e-5) before any reshape, SlowFast is cut to `max_v_l`, then all video parts are cut to the shortest.
"""
from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

L2_EPS = 1e-5


class FeatureError(Exception):
  """A feature file is missing, unreadable or has the wrong rank."""

  def __init__(self, path: str, field: str, message: str):
    self.path = str(path)
    self.field = field
    self.message = message
    super().__init__(f"{self.path}: field={field}: {message}")


@dataclasses.dataclass(frozen=True)
class FeaturePart:
  """One kind of feature file in a layout.

  Attributes:
    name: short name used in messages ('slowfast', 'clip', 'text').
    subdir: directory under the store root (before any `video_suffix`).
    pattern: file name pattern with `{key}` for the vid/qid.
    npz_keys: npz keys tried in order; empty for .npy files.
    rank: number of axes of the stored array: 2 for (L, D), 3 for (L, layers, D).
    truncate: whether this part is cut to `max_v_l` before the video parts are aligned.
  """
  name: str
  subdir: str
  pattern: str
  npz_keys: Tuple[str, ...]
  rank: int
  truncate: bool = False

  def filename(self, key) -> str:
    return self.pattern.format(key=key)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a layout keeps its video parts (concatenated in this order) and its text features."""
  name: str
  video_parts: Tuple[FeaturePart, ...]
  text_part: FeaturePart
  required_video_parts: Tuple[str, ...]


LAYOUTS: Dict[str, Layout] = {
    # QVHighlights / AMR: SlowFast (L, 2304) + CLIP k4 (L, 4, 768); text CLIP k4 (Ntok, 4, 512).
    "qvh": Layout(
        name="qvh",
        video_parts=(
            FeaturePart("slowfast", "slowfast_features", "{key}.npz", ("features",), rank=2, truncate=True),
            FeaturePart("clip", "clip_b32_vid_k4", "{key}.npy", (), rank=3, truncate=False),
        ),
        text_part=FeaturePart("text", "clip_b32_txt_k4", "{key}.npy", (), rank=3),
        required_video_parts=("slowfast", "clip")),
    # moment_detr / lighthouse: SlowFast (L, 2304) optional + CLIP (L, 512); text (Ntok, 512). moment_detr cuts
    # every part to max_v_l.
    "lighthouse": Layout(
        name="lighthouse",
        video_parts=(
            FeaturePart("slowfast", "slowfast_features", "{key}.npz", ("features",), rank=2, truncate=True),
            FeaturePart("clip", "clip_features", "{key}.npz", ("pooler_output", "features"), rank=2,
                        truncate=True),
        ),
        text_part=FeaturePart("text", "clip_text_features", "qid{key}.npz", ("last_hidden_state",), rank=2),
        required_video_parts=("clip",)),
}


def detect_layout(root: str, video_suffix: str = "") -> str:
  """'qvh' or 'lighthouse', from the directories present under `root`."""
  if (os.path.isdir(os.path.join(root, "clip_b32_vid_k4" + video_suffix))
      or os.path.isdir(os.path.join(root, "clip_b32_txt_k4"))):
    return "qvh"
  if (os.path.isdir(os.path.join(root, "clip_features" + video_suffix))
      or os.path.isdir(os.path.join(root, "clip_text_features"))):
    return "lighthouse"
  raise FeatureError(root, "layout", "no known feature layout (expected clip_b32_vid_k4/ + slowfast_features/ "
                     "(QVHighlights) or clip_features/ + clip_text_features/ (lighthouse))")


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Divides every vector along the last axis by (its L2 norm + 1e-5), in float32."""
  x = np.asarray(x, dtype=np.float32)
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(L2_EPS))


_NPY_MAGIC = b"\x93NUMPY"
_HEADER_CACHE: Dict[bytes, Tuple[np.dtype, bool, Tuple[int, ...]]] = {}


def _parse_npy(buffer: bytearray) -> np.ndarray:
  """An array from the bytes of a .npy file, without copying; headers are parsed once per distinct header.

  np.load parses every header with ast.literal_eval, which dominates the time of reading many small files.
  """
  if bytes(buffer[:6]) != _NPY_MAGIC:
    raise ValueError("not a .npy file (bad magic)")
  major = buffer[6]
  if major == 1:
    header_len, start = int.from_bytes(buffer[8:10], "little"), 10
  elif major == 2:
    header_len, start = int.from_bytes(buffer[8:12], "little"), 12
  else:                                  # version 3 (utf-8 headers) is rare: let numpy read it
    return np.load(io.BytesIO(bytes(buffer)), allow_pickle=False)
  header = bytes(buffer[start:start + header_len])
  parsed = _HEADER_CACHE.get(header)
  if parsed is None:
    stream = io.BytesIO(bytes(buffer[:start + header_len]))
    version = np.lib.format.read_magic(stream)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
      raise ValueError("object arrays are not allowed")
    parsed = (dtype, bool(fortran_order), tuple(int(n) for n in shape))
    if len(_HEADER_CACHE) < 4096:
      _HEADER_CACHE[header] = parsed
  dtype, fortran_order, shape = parsed
  count = int(np.prod(shape, dtype=np.int64))
  offset = start + header_len
  if len(buffer) - offset < count * dtype.itemsize:
    raise ValueError(f"file is truncated: {len(buffer) - offset} data bytes for shape {shape} {dtype}")
  array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
  if fortran_order:
    return array.reshape(shape[::-1]).transpose()
  return array.reshape(shape)


def _read_npy_file(path: str) -> np.ndarray:
  with open(path, "rb") as f:
    buffer = bytearray(os.fstat(f.fileno()).st_size)
    f.readinto(buffer)
  return _parse_npy(buffer)


def read_array(path: str, part: FeaturePart) -> np.ndarray:
  """Reads one stored array (as stored, not normalised) and checks its rank.

  Raises:
    FeatureError: missing or unreadable file, missing npz key, wrong rank, empty or non-numeric array.
  """
  try:
    if part.npz_keys:
      with zipfile.ZipFile(path) as npz:
        names = [n[:-4] for n in npz.namelist() if n.endswith(".npy")]
        key = next((k for k in part.npz_keys if k in names), None)
        if key is None:
          raise FeatureError(path, part.npz_keys[0],
                             f"no key {' or '.join(part.npz_keys)} (keys: {', '.join(names) or 'none'})")
        array = _parse_npy(bytearray(npz.read(key + ".npy")))
    else:
      array = _read_npy_file(path)
  except FeatureError:
    raise
  except FileNotFoundError:
    raise FeatureError(path, part.name, "missing file") from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise FeatureError(path, part.name, f"unreadable file ({type(e).__name__}: {e})") from None
  if array.dtype.kind not in "fiu":
    raise FeatureError(path, part.name, f"not a numeric array (dtype {array.dtype})")
  if array.ndim != part.rank:
    expected = "(L, D)" if part.rank == 2 else "(L, layers, D)"
    raise FeatureError(path, part.name, f"wrong rank: shape {array.shape}, expected {expected}")
  return array


class FeatureStore:
  """Per-vid video features and per-qid text features from one feature directory.

  `video(vid)` is float32 [L, Dv] = concat([slowfast, clip.reshape(L, -1)]) after per-vector L2 normalisation;
  `text(qid)` is float32 [Ntok, Dt] (not cut to max_q_l; the pipeline does that).
  """

  def __init__(self, root: str, layout: str = "auto", max_v_l: int = 75, video_suffix: str = "",
               cache: bool = False):
    """Opens a store.

    Args:
      root: the feature directory.
      layout: 'qvh', 'lighthouse' or 'auto' (detected from the directories present).
      max_v_l: videos are cut to this many clips (SlowFast only in the qvh layout, as AMR does).
      video_suffix: '_aug' reads the augmented video dirs (`slowfast_features_aug/`, `clip_b32_vid_k4_aug/`).
      cache: keep every array read in memory.

    Raises:
      FeatureError: unknown layout, or a required video directory is missing.
    """
    self.root = os.fspath(root)
    if not os.path.isdir(self.root):
      raise FeatureError(self.root, "root", "feature directory does not exist")
    if layout == "auto":
      layout = detect_layout(self.root, video_suffix)
    if layout not in LAYOUTS:
      raise FeatureError(self.root, "layout", f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    self.layout = LAYOUTS[layout]
    self.max_v_l = max_v_l
    self.video_suffix = video_suffix
    self.cache = cache
    self._video_cache: Dict[str, np.ndarray] = {}
    self._text_cache: Dict[int, np.ndarray] = {}
    parts = []
    for part in self.layout.video_parts:
      directory = self.part_dir(part)
      if os.path.isdir(directory):
        parts.append(part)
      elif part.name in self.layout.required_video_parts:
        raise FeatureError(directory, part.name, "feature directory is missing")
    self.video_parts: Tuple[FeaturePart, ...] = tuple(parts)
    self.text_part = self.layout.text_part
    self._part_shapes: Dict[str, Tuple[int, ...]] = {}
    self._pinned_shapes: Dict[str, Tuple[int, ...]] = {}   # set by validation: widths of files that passed

  def __repr__(self) -> str:
    return f"FeatureStore({self.root!r}, layout={self.layout.name!r}, video_suffix={self.video_suffix!r})"

  # --- paths -------------------------------------------------------------------------------------------------

  def part_dir(self, part: FeaturePart) -> str:
    suffix = "" if part.name == "text" else self.video_suffix
    return os.path.join(self.root, part.subdir + suffix)

  def part_path(self, part: FeaturePart, key) -> str:
    return os.path.join(self.part_dir(part), part.filename(key))

  def video_path(self, vid: str) -> List[str]:
    """The files `video(vid)` reads, one per video part."""
    return [self.part_path(part, vid) for part in self.video_parts]

  def text_path(self, qid: int) -> List[str]:
    """The file `text(qid)` reads, as a one-element list."""
    return [self.part_path(self.text_part, qid)]

  def has_video(self, vid: str) -> bool:
    return all(os.path.isfile(p) for p in self.video_path(vid))

  def has_text(self, qid: int) -> bool:
    return os.path.isfile(self.text_path(qid)[0])

  # --- raw reads ---------------------------------------------------------------------------------------------

  def read_video_parts(self, vid: str) -> Dict[str, np.ndarray]:
    """The stored arrays of each video part (not normalised, not cut), keyed by part name."""
    return {part.name: read_array(self.part_path(part, vid), part) for part in self.video_parts}

  def read_text_raw(self, qid: int) -> np.ndarray:
    return read_array(self.part_path(self.text_part, qid), self.text_part)

  def aligned_length(self, lengths: Dict[str, int]) -> int:
    """Clips kept by `video()` given the stored length of each part."""
    cut = [min(lengths[p.name], self.max_v_l) if p.truncate else lengths[p.name] for p in self.video_parts]
    return min(cut)

  # --- normalised features -----------------------------------------------------------------------------------

  def video(self, vid: str) -> np.ndarray:
    """float32 [L, Dv]: the normalised, aligned, concatenated video features of `vid`."""
    if vid in self._video_cache:
      return self._video_cache[vid]
    raw = self.read_video_parts(vid)
    parts = []
    for part in self.video_parts:
      x = l2_normalize(raw[part.name])     # [L, D] or [L, layers, D]
      if part.truncate:
        x = x[:self.max_v_l]
      parts.append(x.reshape(x.shape[0], -1))
    length = min(x.shape[0] for x in parts)
    video = np.concatenate([x[:length] for x in parts], axis=1)  # [L, Dv]
    if self.cache:
      self._video_cache[vid] = video
    return video

  def text(self, qid: int) -> np.ndarray:
    """float32 [Ntok, Dt]: the normalised token features of query `qid` (layers flattened)."""
    if qid in self._text_cache:
      return self._text_cache[qid]
    x = l2_normalize(self.read_text_raw(qid))
    text = x.reshape(x.shape[0], -1)      # [Ntok, Dt]
    if self.cache:
      self._text_cache[qid] = text
    return text

  # --- widths ------------------------------------------------------------------------------------------------

  def pin_part_shapes(self, shapes: Dict[str, Tuple[int, ...]]) -> None:
    """Fixes the per-clip shape of parts (name -> shape without the length axis), e.g. from validated files.

    `video_dim` / `text_dim` / `part_shapes()` then report these instead of sampling the first file listed.
    """
    for name, shape in shapes.items():
      if shape is not None:
        self._pinned_shapes[name] = tuple(int(n) for n in shape)

  def pinned_shape(self, name: str) -> Optional[Tuple[int, ...]]:
    """The shape `pin_part_shapes` fixed for part `name`, or None."""
    return self._pinned_shapes.get(name)

  def _sample_shape(self, part: FeaturePart) -> Tuple[int, ...]:
    """The per-clip shape (all axes but the first) of `part`: pinned by validation, else the first readable file."""
    if part.name in self._pinned_shapes:
      return self._pinned_shapes[part.name]
    if part.name not in self._part_shapes:
      directory = self.part_dir(part)
      suffix = part.pattern.rsplit(".", 1)[-1]
      last_error: Optional[FeatureError] = None
      try:
        with os.scandir(directory) as entries:
          for entry in entries:
            if not entry.name.endswith("." + suffix):
              continue
            try:
              self._part_shapes[part.name] = tuple(read_array(entry.path, part).shape[1:])
              break
            except FeatureError as e:
              last_error = e
      except FileNotFoundError:
        raise FeatureError(directory, part.name, "feature directory is missing") from None
      if part.name not in self._part_shapes:
        if last_error is not None:
          raise last_error
        raise FeatureError(directory, part.name, "no feature files to read the width from")
    return self._part_shapes[part.name]

  def part_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """Per-clip shape of every part (video parts and 'text'), read from one file each."""
    return {p.name: self._sample_shape(p) for p in self.video_parts + (self.text_part,)}

  @property
  def video_dim(self) -> int:
    """Dv, the width of `video()` rows: from the validated files when validation ran, else the first file."""
    return int(sum(np.prod(self._sample_shape(p)) for p in self.video_parts))

  @property
  def text_dim(self) -> int:
    """Dt, the width of `text()` rows: from the validated files when validation ran, else the first file."""
    return int(np.prod(self._sample_shape(self.text_part)))

  def describe_width(self, kind: str) -> str:
    """'slowfast 2304 + clip 4x768' ('video') or 'text 4x512' ('text'): how the width is made up."""
    parts = self.video_parts if kind == "video" else (self.text_part,)
    return " + ".join(f"{p.name} {'x'.join(str(n) for n in self._sample_shape(p))}" for p in parts)

