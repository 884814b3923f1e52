"""One entry point for every evaluator: `evaluate(task, submission_rows, gt_rows)` and its file variant.

Tasks: "qvh" (moment_detr QVHighlights), "qvm2" (QV-M² / FlashMMR), "charades" (standard + moment_detr MR).
"""
from __future__ import annotations

import pathlib

from amr_jax.metrics import charades, qvh, qvm2
from amr_jax.metrics.common import load_jsonl
from amr_jax.metrics.submission import prepare

TASKS = ('qvh', 'qvm2', 'charades')


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; expected one of {", ".join(TASKS)}')


def _evaluate_prepared(task: str, prepared) -> dict:
  if task == 'qvh':
    return qvh.evaluate(prepared)
  if task == 'qvm2':
    return qvm2.evaluate(prepared)
  return charades.evaluate(prepared)


def evaluate(task: str, submission_rows: list, gt_rows: list, *, submission_name: str = 'submission',
             annotations_name: str = 'annotations', submission_lines=None, annotations_lines=None) -> dict:
  """Official metrics of submission rows against GT rows.

  Args:
    task: "qvh", "qvm2" or "charades".
    submission_rows: dicts with qid and pred_relevant_windows [[st, ed, score], ...] (qvh: optionally
      pred_saliency_scores), one per GT qid.
    gt_rows: annotation dicts (qid, relevant_windows; for highlights duration, relevant_clip_ids,
      saliency_scores).
    submission_name, annotations_name: used in problem messages.
    submission_lines, annotations_lines: optional 1-based line numbers of the rows, for problem messages.

  Returns:
    The official result dict (key order as the official scripts write it).

  Raises:
    SubmissionError: validation failed; `.problems` lists every problem, one line each.
  """
  _check_task(task)
  prepared = prepare(task, submission_rows, gt_rows, submission_name=submission_name,
                     annotations_name=annotations_name, submission_lines=submission_lines,
                     annotations_lines=annotations_lines)
  return _evaluate_prepared(task, prepared)


def evaluate_files(task: str, submission_path, annotations_path) -> dict:
  """`evaluate` on two jsonl files; problems name the files and line numbers.

  Raises:
    InputError: a file is missing / unreadable, or a line is not JSON (with its line number).
    SubmissionError: validation failed.
  """
  _check_task(task)
  submission_rows, submission_lines = load_jsonl(submission_path)
  gt_rows, gt_lines = load_jsonl(annotations_path)
  return evaluate(task, submission_rows, gt_rows, submission_name=pathlib.Path(submission_path).name,
                  annotations_name=pathlib.Path(annotations_path).name, submission_lines=submission_lines,
                  annotations_lines=gt_lines)


def brief(task: str, result: dict) -> dict:
  """The block a human wants on stdout: "brief" (charades: the standard block and the moment_detr brief)."""
  if task == 'charades':
    return {'standard': result['standard'], 'moment_detr': result['moment_detr']['brief']}
  return result['brief']
