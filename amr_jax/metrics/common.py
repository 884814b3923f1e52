"""Shared pieces of the evaluators: float64 IoU, official rounding, jsonl IO, ragged window tables.

Every expression here reproduces the float64 operation order of the official scripts (see tests/fixtures/eval).
"""
from __future__ import annotations

import json
import pathlib

import numpy as np


CLIP_LENGTH_SEC = 2
# The moment_detr thresholds: float(f"{e:.2f}") of linspace(0.5, 0.95, 10), i.e. the Python literals.
MR_AP_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# (name, min_len, max_len): a GT window belongs to a bucket when min_len < end - start <= max_len.
LENGTH_BUCKETS = (('short', 0, 10), ('middle', 10, 30), ('long', 30, 150))
MAX_PRED_WINDOWS_AP = 10


class InputError(ValueError):
  """A file that cannot be read as the expected jsonl (missing, unreadable, bad JSON line)."""


class SubmissionError(ValueError):
  """A submission (or its annotations) that fails validation; `problems` lists every problem, one line each."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    super().__init__('\n'.join(self.problems))


def load_jsonl(path) -> tuple[list, list[int]]:
  """Reads a jsonl file; returns (rows, 1-based line numbers). Blank lines are skipped.

  Raises:
    InputError: the file is missing or unreadable, or a line is not valid JSON (named with its number).
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding='utf-8')
  except FileNotFoundError:
    raise InputError(f'{path}: no such file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: cannot read ({e})') from None
  body = text.strip()
  if not body:
    return [], []
  first_line = text.count('\n', 0, len(text) - len(text.lstrip())) + 1
  try:  # fast path: the whole file as one JSON array (one comma per newline); blank lines make it fail
    rows = json.loads('[' + body.replace('\n', ',') + ']')
    if len(rows) == body.count('\n') + 1:
      return rows, list(range(first_line, first_line + len(rows)))
  except ValueError:
    pass
  rows, line_numbers = [], []  # slow path: line by line, skipping blank lines, naming the first bad line
  decode = json.JSONDecoder().decode
  for line_number, line in enumerate(text.split('\n'), start=1):
    if not line or line.isspace():
      continue
    try:
      rows.append(decode(line))
    except ValueError as e:
      raise InputError(f'{path}:{line_number}: invalid JSON ({e})') from None
    line_numbers.append(line_number)
  return rows, line_numbers


def write_json(path, result: dict) -> None:
  """Writes `result` as the official scripts do: `json.dumps(result, indent=4)`, no trailing newline."""
  path = pathlib.Path(path)
  if path.parent != pathlib.Path(''):
    path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=4))


def percent(fraction) -> float:
  """The official formatting of a fraction: float(f"{100 * x:.2f}")."""
  return float(f'{100 * fraction:.2f}')


def round2(value) -> float:
  """float(f"{v:.2f}") for a value that is already in percent."""
  return float(f'{value:.2f}')


def accumulate_rows(ufunc, array: np.ndarray, dtype=None) -> np.ndarray:
  """`ufunc.accumulate(array, axis=0)` computed as one vectorised call per row: the same sequential result.

  numpy accumulates along axis 0 one column at a time (and casts through small buffers), about ten times slower
  than this loop for the (few rows, many columns) arrays used here.
  """
  out = np.empty(array.shape, dtype=dtype or array.dtype)
  if len(array):
    out[0] = array[0]
  for i in range(1, len(array)):
    ufunc(out[i - 1], array[i], out=out[i])
  return out


_PAIRWISE_UNROLL = 8     # numpy's pairwise summation: 8 accumulators ...
_PAIRWISE_BLOCK = 128    # ... for up to 128 elements, recursive halving beyond


def _pack_to_front(values: np.ndarray, selected: np.ndarray) -> np.ndarray:
  """(W, N): in each column, the selected values moved to the front in order, zeros after."""
  values, selected = np.ascontiguousarray(values), np.ascontiguousarray(selected)
  num_cols = values.shape[1]
  flat = np.flatnonzero(selected)
  slot = accumulate_rows(np.add, selected, np.int32).ravel().take(flat) - 1
  packed = np.zeros(values.size, dtype=np.float64)
  packed.put(slot.astype(np.int64) * num_cols + flat % num_cols, values.ravel().take(flat))
  return packed.reshape(values.shape)


def exact_column_sums(values: np.ndarray, selected: np.ndarray) -> np.ndarray:
  """Per column j of (W, N) arrays, `np.sum(values[:, j][selected[:, j]])`, bit-exact, for all columns at once.

  numpy sums a contiguous float64 vector of n elements as `0 + pairwise(a)`: for n < 8 sequentially; for
  n <= 128 into 8 strided accumulators r[j] = a[j] + a[j+8] + ... over the first n - n % 8 elements, combined as
  ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the remaining n % 8 elements added in order; longer
  vectors are split recursively (handled here by calling np.sum on them). The tests check this emulation against
  np.sum for every length up to 300. Working on columns lets every step be one vectorised op over all of them.
  """
  counts = selected.sum(axis=0)
  packed = _pack_to_front(values, selected)
  width, num_cols = packed.shape
  flat = packed.ravel()
  col_index = np.arange(num_cols)
  sums = np.zeros(num_cols, dtype=np.float64)

  short = (counts > 0) & (counts < _PAIRWISE_UNROLL)
  if short.any():                                                 # sequential: a running sum down the rows
    prefix = accumulate_rows(np.add, packed[:min(_PAIRWISE_UNROLL - 1, width)])
    last = np.clip(counts - 1, 0, len(prefix) - 1)
    np.copyto(sums, prefix.ravel().take(last * num_cols + col_index), where=short)

  unrolled = (counts >= _PAIRWISE_UNROLL) & (counts <= _PAIRWISE_BLOCK)
  if unrolled.any():
    num_blocks = np.where(unrolled, counts // _PAIRWISE_UNROLL, 1)
    block_rows = int(num_blocks.max()) * _PAIRWISE_UNROLL
    blocks = packed[:block_rows].reshape(-1, _PAIRWISE_UNROLL * num_cols)
    running = accumulate_rows(np.add, blocks).ravel()                  # (B, 8 * N): the 8 accumulators
    base = (num_blocks - 1) * (_PAIRWISE_UNROLL * num_cols) + col_index
    r = [running.take(base + j * num_cols) for j in range(_PAIRWISE_UNROLL)]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    done = num_blocks * _PAIRWISE_UNROLL
    for extra in range(_PAIRWISE_UNROLL - 1):                      # the n % 8 remaining elements, in order
      more = unrolled & (done + extra < counts)
      if not more.any():
        break
      np.add(total, flat.take(np.minimum(done + extra, width - 1) * num_cols + col_index), out=total, where=more)
    np.copyto(sums, total, where=unrolled)

  for col in col_index[counts > _PAIRWISE_BLOCK]:
    sums[col] = np.sum(np.ascontiguousarray(packed[:counts[col], col]))
  return sums


class WindowTable:
  """Ragged per-query rows of fixed-width records (windows or scores) stored flat.

  Attributes:
    values: (total, width) float64, all rows concatenated in row order.
    offsets: (num_rows + 1,) int64; row i is values[offsets[i]:offsets[i + 1]].
  """
  __slots__ = ('values', 'offsets')

  def __init__(self, values: np.ndarray, offsets: np.ndarray):
    self.values = values
    self.offsets = offsets

  @classmethod
  def from_counts(cls, values: np.ndarray, counts) -> WindowTable:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return cls(values, offsets)

  @classmethod
  def concat(cls, tables: list) -> WindowTable:
    """The rows of several tables one after the other."""
    values = np.concatenate([t.values for t in tables], axis=0)
    return cls.from_counts(values, np.concatenate([t.counts for t in tables]))

  @property
  def counts(self) -> np.ndarray:
    return np.diff(self.offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def take_rows(self, rows: np.ndarray) -> WindowTable:
    """The sub-table of the given row indices, in that order."""
    counts = self.counts[rows]
    starts = self.offsets[:-1][rows]
    total = int(counts.sum())
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    flat = np.repeat(starts - new_offsets[:-1], counts) + np.arange(total)
    return WindowTable(np.take(self.values, flat, axis=0), new_offsets)

  def keep(self, keep_mask: np.ndarray) -> WindowTable:
    """Drops the entries where `keep_mask` (total,) is False; every row stays (possibly empty)."""
    kept_before = np.zeros(len(keep_mask) + 1, dtype=np.int64)
    np.cumsum(keep_mask, out=kept_before[1:])
    kept_per_row = kept_before[self.offsets[1:]] - kept_before[self.offsets[:-1]]
    return WindowTable.from_counts(self.values[keep_mask], kept_per_row)

  def padded(self, max_per_row: int | None = None, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(num_rows, W, width) values and (num_rows, W) validity; the first `max_per_row` entries of each row."""
    counts = self.counts
    if max_per_row is not None:
      counts = np.minimum(counts, max_per_row)
    width = int(counts.max()) if len(counts) else 0
    width = max(width, 1)
    slots = np.arange(width)
    valid = slots[None, :] < counts[:, None]
    index = np.where(valid, self.offsets[:-1, None] + slots[None, :], 0)
    if len(self.values):
      out = np.take(self.values, index, axis=0)
    else:
      out = np.zeros(index.shape + self.values.shape[1:], dtype=np.float64)
    out[~valid] = fill
    return out, valid
