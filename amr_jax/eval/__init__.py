"""Official moment-retrieval / highlight-detection metrics (QVHighlights, QV-M², Charades-STA) in numpy.

`api.evaluate(task, submission_rows, gt_rows)` is the entry point; `plots` (matplotlib) is imported lazily.
"""
from amr_jax.eval.api import TASKS, evaluate, evaluate_files
from amr_jax.eval.common import InputError, SubmissionError

__all__ = ['TASKS', 'InputError', 'SubmissionError', 'evaluate', 'evaluate_files']
