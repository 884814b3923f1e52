"""Annotation loaders: QVHighlights / QV-M² / Charades-STA files into `MomentRecord`s, and a jsonl writer.

Formats are auto-detected per file: QVH-style jsonl (labelled, unlabelled, optional saliency and `wrong_spans`) and
the Charades-STA txt form `VID start end##query`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from amr_jax.data.records import MomentRecord

PathOrPaths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


class AnnotationError(ValueError):
  """A malformed annotation row; the message names the file, line, qid and field."""

  def __init__(self, path: str, line: int, qid: Any, field: str, message: str):
    self.path = str(path)
    self.line = line
    self.qid = qid
    self.field = field
    self.message = message
    super().__init__(f"{self.path}:{line}: qid={qid} field={field}: {message}")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class _RowParser:
  """Checks the types of one jsonl row and builds its record; errors name file, line, qid and field."""

  def __init__(self, path: str, line: int, row: Any, with_labels: bool = True):
    self.path = path
    self.line = line
    self.row = row
    self.with_labels = with_labels
    self.qid = row.get("qid") if isinstance(row, dict) else None

  def fail(self, field: str, message: str) -> AnnotationError:
    return AnnotationError(self.path, self.line, self.qid, field, message)

  def qid_value(self) -> int:
    value = self.row.get("qid")
    if _is_int(value):
      return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
      return int(value)
    raise self.fail("qid", f"expected an integer, got {value!r}")

  def str_value(self, field: str) -> str:
    if field not in self.row:
      raise self.fail(field, "missing")
    value = self.row[field]
    if not isinstance(value, str):
      raise self.fail(field, f"expected a string, got {type(value).__name__}")
    return value

  def duration_value(self) -> Optional[float]:
    value = self.row.get("duration")
    if value is None:
      return None
    if not _is_number(value):
      raise self.fail("duration", f"expected a number or null, got {value!r}")
    return float(value)

  def spans_value(self, field: str) -> Optional[Tuple[Tuple[float, float], ...]]:
    """A list of [start, end] pairs as float tuples; None when the field is absent or null."""
    value = self.row.get(field)
    if value is None:
      return None
    if not isinstance(value, list):
      raise self.fail(field, f"expected a list of [start, end], got {type(value).__name__}")
    spans = []
    for i, span in enumerate(value):
      if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_number(x) for x in span)):
        raise self.fail(f"{field}[{i}]", f"expected [start, end] numbers, got {span!r}")
      spans.append((float(span[0]), float(span[1])))
    return tuple(spans)

  def clip_ids_value(self) -> Optional[Tuple[int, ...]]:
    value = self.row.get("relevant_clip_ids")
    if value is None:
      return None
    if not isinstance(value, list) or not all(_is_int(x) for x in value):
      raise self.fail("relevant_clip_ids", "expected a list of integers")
    return tuple(value)

  def saliency_value(self) -> Optional[Tuple[Tuple[int, ...], ...]]:
    value = self.row.get("saliency_scores")
    if value is None:
      return None
    if not isinstance(value, list):
      raise self.fail("saliency_scores", "expected a list of per-clip score lists")
    scores = []
    for i, clip_scores in enumerate(value):
      if not isinstance(clip_scores, list) or not all(_is_number(x) and float(x).is_integer()
                                                      for x in clip_scores):
        raise self.fail(f"saliency_scores[{i}]", f"expected a list of integer scores, got {clip_scores!r}")
      scores.append(tuple(int(x) for x in clip_scores))
    return tuple(scores)

  def record(self) -> MomentRecord:
    if not isinstance(self.row, dict):
      raise self.fail("row", f"expected a JSON object, got {type(self.row).__name__}")
    qid = self.qid_value()
    self.qid = qid
    vid = self.str_value("vid")
    if not vid:
      raise self.fail("vid", "empty video id")
    query, duration = self.str_value("query"), self.duration_value()
    if not self.with_labels:  # predicting: label fields are neither parsed nor kept
      return MomentRecord(qid=qid, vid=vid, query=query, duration=duration, source=self.path, line=self.line)
    return MomentRecord(
        qid=qid,
        vid=vid,
        query=query,
        duration=duration,
        windows=self.spans_value("relevant_windows") or (),
        relevant_clip_ids=self.clip_ids_value(),
        saliency_scores=self.saliency_value(),
        wrong_spans=self.spans_value("wrong_spans"),
        source=self.path,
        line=self.line)


def _load_jsonl(path: str, lines: Iterable[str], errors: Optional[List[AnnotationError]] = None,
                with_labels: bool = True) -> List[MomentRecord]:
  """Rows of a jsonl file; a bad row raises, or with `errors` given is appended there and skipped."""
  records = []
  for line_no, text in enumerate(lines, start=1):
    if not text.strip():
      continue
    try:
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        raise AnnotationError(path, line_no, None, "row", f"invalid JSON ({e.msg} at column {e.colno})") from None
      records.append(_RowParser(path, line_no, row, with_labels).record())
    except AnnotationError as e:
      if errors is None:
        raise
      errors.append(e)
  return records


def _load_charades_txt(path: str, lines: Iterable[str], errors: Optional[List[AnnotationError]] = None,
                       with_labels: bool = True) -> List[MomentRecord]:
  """The TALL/2D-TAN form `VID start end##query`; qid = 0-based line index, duration unknown.

  Rows with start >= end (4 in the original train file) are kept so that validation can report them. A bad row
  raises, or with `errors` given is appended there and skipped; with_labels=False ignores start/end.
  """
  records = []
  for line_no, text in enumerate(lines, start=1):
    text = text.rstrip("\r\n")
    if not text.strip():
      continue
    qid = line_no - 1
    try:
      head, sep, query = text.partition("##")
      if not sep:
        raise AnnotationError(path, line_no, qid, "row", "expected 'VID start end##query'")
      parts = head.split()
      if len(parts) != 3:
        raise AnnotationError(path, line_no, qid, "row", f"expected 'VID start end' before '##', got {head!r}")
      vid, start_text, end_text = parts
      windows = ()
      if with_labels:
        try:
          windows = ((float(start_text), float(end_text)),)
        except ValueError:
          raise AnnotationError(path, line_no, qid, "relevant_windows",
                                f"start/end are not numbers: {start_text!r} {end_text!r}") from None
      records.append(MomentRecord(qid=qid, vid=vid, query=query.strip(), duration=None,
                                  windows=windows, source=path, line=line_no))
    except AnnotationError as e:
      if errors is None:
        raise
      errors.append(e)
  return records


def detect_format(path: str, first_line: str) -> str:
  """'jsonl' or 'charades_txt', from the first non-empty line (and the suffix as a tie-break)."""
  stripped = first_line.lstrip()
  if stripped.startswith("{"):
    return "jsonl"
  if "##" in first_line or str(path).endswith(".txt"):
    return "charades_txt"
  return "jsonl"


def load_annotations(path: Union[str, os.PathLike], *, with_labels: bool = True,
                     errors: Optional[List[AnnotationError]] = None) -> List[MomentRecord]:
  """Loads one annotation file (format auto-detected) into records, in file order.

  Args:
    path: a QVH-style jsonl (QVHighlights, QV-M², lighthouse Charades) or a Charades-STA txt file.
    with_labels: False = predicting: the label fields (windows, clip ids, saliency, wrong spans) are not parsed,
      so rows without (or with malformed) labels load.
    errors: None = the first malformed row raises; a list = every malformed row is appended to it and skipped.

  Returns:
    One `MomentRecord` per non-empty, well-formed line; `source` is `path`, `line` is the 1-based line number.

  Raises:
    AnnotationError: a row is malformed (the message names file, line, qid and field), unless `errors` is given.
    OSError: the file cannot be read.
  """
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  first = next((line for line in lines if line.strip()), "")
  if detect_format(path, first) == "charades_txt":
    return _load_charades_txt(path, lines, errors, with_labels)
  return _load_jsonl(path, lines, errors, with_labels)


def split_paths(paths: PathOrPaths) -> List[str]:
  """A path, a comma-separated string of paths, or a list of either, as a flat list of paths."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  flat = []
  for entry in paths:
    flat.extend(p.strip() for p in os.fspath(entry).split(",") if p.strip())
  return flat


def load_many(paths: PathOrPaths, *, with_labels: bool = True) -> List[MomentRecord]:
  """Loads and concatenates several annotation files (comma-separated string or list), in the given order."""
  records = []
  for path in split_paths(paths):
    records.extend(load_annotations(path, with_labels=with_labels))
  return records


def write_jsonl(records: Iterable[MomentRecord], path: Union[str, os.PathLike]) -> None:
  """Writes records as QVHighlights-style jsonl rows (one per line; fields that are None are left out)."""
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record.to_json(), allow_nan=True) + "\n")

