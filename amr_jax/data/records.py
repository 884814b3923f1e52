"""The one typed record every annotation loader produces (QVHighlights, QV-M², Charades-STA).

Times are seconds; windows are (start, end) with start < end; clips are 2 s (`CLIP_LEN_SEC`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

CLIP_LEN_SEC = 2.0

Window = Tuple[float, float]


@dataclasses.dataclass(frozen=True)
class MomentRecord:
  """One query of a moment-retrieval dataset.

  Attributes:
    qid: query id (int for QVH/QV-M²/Charades-jsonl; Charades-txt gets its line index).
    vid: video id, the key of the video feature files.
    query: the natural-language query.
    duration: video duration in seconds (None when the source has none, e.g. Charades txt).
    windows: GT windows in seconds, in annotation order; empty for unlabelled splits (QVH test).
    relevant_clip_ids: 2 s clip ids covered by the windows (QVH only), else None.
    saliency_scores: per relevant clip, the 3 annotators' scores 0..4 (QVH only), else None.
    wrong_spans: mined hard-negative spans in seconds on the 2 s grid (Boost), else None.
    source: the file the record came from (for error messages).
    line: 1-based line number in `source`.
  """
  qid: int
  vid: str
  query: str
  duration: Optional[float]
  windows: Tuple[Window, ...] = ()
  relevant_clip_ids: Optional[Tuple[int, ...]] = None
  saliency_scores: Optional[Tuple[Tuple[int, ...], ...]] = None
  wrong_spans: Optional[Tuple[Window, ...]] = None
  source: str = ""
  line: int = 0

  @property
  def has_labels(self) -> bool:
    return len(self.windows) > 0

  @property
  def has_saliency(self) -> bool:
    return self.saliency_scores is not None and self.relevant_clip_ids is not None

  def replace(self, **kw) -> "MomentRecord":
    return dataclasses.replace(self, **kw)

  def to_json(self) -> dict:
    """The QVHighlights jsonl row for this record (fields that are None are left out)."""
    row = {"qid": self.qid, "query": self.query, "duration": self.duration, "vid": self.vid}
    if self.windows:
      row["relevant_windows"] = [list(w) for w in self.windows]
    if self.relevant_clip_ids is not None:
      row["relevant_clip_ids"] = list(self.relevant_clip_ids)
    if self.saliency_scores is not None:
      row["saliency_scores"] = [list(s) for s in self.saliency_scores]
    if self.wrong_spans is not None:
      row["wrong_spans"] = [list(w) for w in self.wrong_spans]
    return row
