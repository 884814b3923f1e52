"""The 'prvr' evaluator type: R@1/5/10/100 and SumR of a caption-to-video score matrix or ranking (MS-SL / AMDNet).

Ground truth: a PRVR caption file (`cap_id caption`) or a shipped moment-retrieval annotation file (Charades-STA, QVH).
"""
from __future__ import annotations

import pathlib
from typing import Any, Dict, List, Tuple

import numpy as np

from amr_jax.data import annotations as ann_lib
from amr_jax.data import prvr as prvr_data
from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics.base import Evaluator
from amr_jax.metrics.common import InputError, SubmissionError

SCALARS = ('R1', 'R5', 'R10', 'R100', 'SumR')


def annotation_format(path) -> str:
  """'caption' (a `cap_id caption` file) or 'records' (a QVH-style jsonl or a Charades-STA `VID s e##query` txt),
  from the first non-blank line.

  Raises:
    InputError: the file is missing or unreadable.
  """
  try:
    with open(path, encoding='utf-8') as f:
      first = next((line for line in f if line.strip()), '')
  except FileNotFoundError:
    raise InputError(f'{path}: no such annotation file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: cannot read ({e})') from None
  return 'records' if first.lstrip().startswith('{') or '##' in first else 'caption'


def read_collection(path, *, name: str = '', split: str = '') -> prvr_data.PrvrCollection:
  """The PRVR collection of a caption file or of a shipped moment-retrieval annotation file.

  Caption files are read by `amr_jax.data.prvr.read_caption_file`. Annotation files (QVHighlights jsonl,
  Charades-STA txt) give one caption per record with cap_id `{vid}#{qid}` (the ids the planted PRVR store is
  keyed by); their labels (windows) are not needed and not parsed. Problems (unparsable rows, missing or empty
  files) are collected in `collection.problems`, never raised.
  """
  path = str(path)
  try:
    kind = annotation_format(path)
  except InputError as e:
    return prvr_data.PrvrCollection([], name=name, split=split, source=path, problems=[
        prvr_data.PrvrProblem(path, 'file', str(e).split(': ', 1)[-1], scope=prvr_data.SCOPE_STORE)])
  if kind == 'caption':
    return prvr_data.read_caption_file(path, name=name, split=split)
  errors: List[ann_lib.AnnotationError] = []
  records = ann_lib.load_annotations(path, with_labels=False, errors=errors)
  problems = [prvr_data.PrvrProblem(e.path, e.field, e.message, line=e.line, cap_id=None) for e in errors]
  if not records and not problems:
    problems.append(prvr_data.PrvrProblem(path, 'file', 'empty annotation file (no records)',
                                          scope=prvr_data.SCOPE_STORE))
  collection = prvr_data.collection_from_records(records, name=name, split=split)
  collection.source = path
  collection.problems = problems
  return collection


def ground_truth_of_file(path) -> Tuple[List[str], List[str]]:
  """(cap_ids in file order, video ids by first appearance) of a caption or annotation file.

  Raises:
    InputError: missing / unreadable / empty. SubmissionError: malformed rows, one line each.
  """
  if annotation_format(path) == 'caption':
    return prvr_metrics.read_caption_gt(path)
  collection = read_collection(path)
  fatal = [p for p in collection.problems if p.scope == prvr_data.SCOPE_STORE]
  if fatal:
    raise InputError(str(fatal[0]))
  if collection.problems:
    raise SubmissionError([str(p) for p in collection.problems])
  return collection.cap_ids, list(collection.video_ids)


class PrvrEvaluator(Evaluator):
  """Text-to-video retrieval recalls exactly as the MS-SL / GMMFormer / AMDNet validation code computes them.

  Options: tie_order ('stable' = the original's torch.argsort tie order; 'optimistic' | 'pessimistic').
  predictions: {'scores' [Nq, Nv], 'cap_ids' [Nq], 'vid_ids' [Nv]} (rows / columns in any order: they are
  aligned to the ground truth; a float32 jax.Array in ground-truth order is ranked on device, without a copy to
  host) or {'ranks' [Nq], 'cap_ids' [Nq]}. ground_truth: {'cap_ids', 'video_ids'} (`PrvrEvalData.ground_truth`).
  """

  def __init__(self, tie_order: str = 'stable', **options):
    super().__init__(tie_order=tie_order, **options)
    prvr_metrics._check_tie_order(tie_order)  # pylint: disable=protected-access
    self.tie_order = tie_order

  def evaluate(self, predictions: Dict[str, Any], ground_truth: Dict[str, Any]) -> dict:
    cap_ids, videos = list(ground_truth['cap_ids']), list(ground_truth['video_ids'])
    if 'ranks' in predictions:
      if list(predictions['cap_ids']) != cap_ids:
        raise SubmissionError(['predictions: field=cap_ids: ranks must be in ground-truth caption order'])
      ranks = np.asarray(predictions['ranks'])
    else:
      ranks = prvr_metrics.ranks_from_scores(predictions['scores'], predictions['cap_ids'], predictions['vid_ids'],
                                             cap_ids, videos, tie_order=self.tie_order, name='predictions')
    result: Dict[str, Any] = prvr_metrics.recall_metrics(ranks)
    result.update(num_captions=len(cap_ids), num_videos=len(videos))
    return result

  def evaluate_files(self, submission_path: str, annotations_path: str) -> dict:
    """A score file (.npz: scores, cap_ids, vid_ids) or a ranking file (.jsonl: cap_id, ranked_vids) against a
    caption file or a Charades-STA / QVH annotation file."""
    if annotation_format(annotations_path) == 'caption':
      return prvr_metrics.evaluate_file(submission_path, annotations_path, tie_order=self.tie_order)
    cap_ids, videos = ground_truth_of_file(annotations_path)
    return prvr_metrics.evaluate_ids(submission_path, cap_ids, videos, tie_order=self.tie_order,
                                     caption_name=pathlib.Path(annotations_path).name)

  def scalars(self, result: dict) -> dict:
    return {k: float(result[k]) for k in SCALARS}

  def brief(self, result: dict) -> dict:
    return dict(self.scalars(result), num_captions=result['num_captions'], num_videos=result['num_videos'])
