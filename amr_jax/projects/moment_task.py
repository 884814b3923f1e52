"""What the moment-retrieval methods (AMR, FlashMMR) share on top of the task contract: MR data and linen glue.

`MomentTask` reads QVH-style records + a feature store into padded batches, and predicts with sliding windows.
"""
from __future__ import annotations

import sys
from typing import Iterator, Optional, Sequence

import numpy as np

from amr_jax import task as task_lib
from amr_jax.data import array_store as array_store_lib
from amr_jax.data import features as feat_lib
from amr_jax.data import validate as validate_lib
from data_pipelines import batches as batch_lib
from data_pipelines import stream_cache as stream_lib
from data_pipelines.examples import PadSpec, build_example, stack_examples

MODEL_INPUTS = ('src_vid', 'src_vid_mask', 'src_txt', 'src_txt_mask')
FEATURE_SOURCES = ('auto', 'memory', 'stream')


def feature_cache(store, records, feature_source: str = 'auto'):
  """The features of `records`: preloaded (`FeatureCache`) or read on demand from an ArrayStore (`StreamCache`)."""
  if feature_source not in FEATURE_SOURCES:
    raise ValueError(f'data.feature_source={feature_source!r}: expected one of {", ".join(FEATURE_SOURCES)}')
  streamable = isinstance(store, array_store_lib.ArrayStore)
  if feature_source == 'stream' and not streamable:
    raise ValueError(f"data.feature_source='stream' needs a converted store (launch/convert_store.py); "
                     f'{store.root} is a feature directory')
  if streamable and feature_source != 'memory':
    return stream_lib.StreamCache(store, records)
  return batch_lib.FeatureCache(store, records)


class DataError(ValueError):
  """Training or evaluation data failed validation (every problem listed, one per line)."""


def model_inputs(batch: dict) -> list:
  """The positional model inputs of a generic batch, in MODEL_INPUTS order."""
  return [batch[k] for k in MODEL_INPUTS]


def preflight(records, store, config, what: str, *, load_problems=(), with_labels: bool = True,
              drop_bad: Optional[bool] = None):
  """Validate every record against the store before any compute; report every problem at once.

  load_problems: what loading found (unparsable rows, empty or missing files); they are reported with the rest.
  An empty or missing annotation file (scope 'file') cannot be dropped: the run stops with it.
  """
  problems = list(load_problems) + validate_lib.validate(records, store, max_v_l=store.max_v_l,
                                                         with_labels=with_labels)
  if not records and not problems:
    problems.append(validate_lib.Problem(what, None, None, 'file', 'no records to use',
                                         scope=validate_lib.SCOPE_FILE))
  if not problems:
    return records
  drop = config.data.drop_bad if drop_bad is None else drop_bad
  fatal = [p for p in problems if p.scope == validate_lib.SCOPE_FILE]
  if drop and not fatal:
    kept, dropped = validate_lib.drop_bad(records, problems)
    unparsable = sum(1 for p in load_problems if p.scope == validate_lib.SCOPE_RECORD)
    print(f'[{what}] dropped {len(dropped)} bad samples and {unparsable} unparsable rows: '
          + ', '.join(str(r.qid) for r in dropped[:20]), file=sys.stderr)
    if not kept:
      raise DataError(f'{what}: every sample was dropped by validation')
    return kept
  lines = '\n'.join(str(p) for p in problems)
  hint = '' if fatal else ' (set --config.data.drop_bad=True to drop)'
  raise DataError(f'{what}: {len(problems)} data problem(s){hint}:\n' + lines)


class MomentTrainData(task_lib.TrainData):
  """A training `Split` (records + cached features, optionally augmented) behind the contract."""

  def __init__(self, split: batch_lib.Split, sample_order=None):
    self.split = split
    self._sample_order = sample_order   # (seed, global_batch, num_steps) -> step -> indices, or None
    self.spec = task_lib.spec_of(self.batch(0, 0, 1))

  def __len__(self) -> int:
    return len(self.split)

  def batch(self, seed, step, global_batch, process_index=0, process_count=1, indices=None) -> dict:
    index_fn = None if indices is None else (lambda _: indices)
    return batch_lib.make_train_batch(self.split, seed, step, global_batch, process_index, process_count, index_fn)

  def sample_order(self, seed, global_batch, num_steps):
    return None if self._sample_order is None else self._sample_order(seed, global_batch, num_steps)


class MomentEvalData(task_lib.EvalData):
  """Records to predict: one example per record, or per sliding-window chunk of a long video."""

  def __init__(self, records: Sequence, store, spec: PadSpec, *, with_labels: bool = True,
               sliding_window: bool = False, window_overlap: int = 25, feature_source: str = 'auto'):
    self.records = list(records)
    self.by_qid = {r.qid: r for r in self.records}
    self.store = store
    self.pad = spec
    self.with_labels = with_labels
    self.ground_truth = [r.to_json() for r in self.records] if with_labels else None
    self.sliding_window = sliding_window
    self.window_overlap = window_overlap
    if with_labels:   # scoring a val split: examples with labels, from an in-memory cache
      cache = feature_cache(store, self.records, feature_source)
      self.split = batch_lib.Split(records=self.records, cache=cache, spec=spec)
    self.spec = task_lib.spec_of(next(self.batches(1)))

  def __len__(self) -> int:
    return len(self.records)

  def chunks(self, num_clips: int) -> list:
    """[(start, end)] clip ranges covering a video: one when it fits max_v_l (or sliding is off)."""
    lv = self.pad.max_v_l
    if num_clips <= lv or not self.sliding_window:
      return [(0, min(num_clips, lv))]
    stride = max(lv - self.window_overlap, 1)
    starts = list(range(0, num_clips - lv + 1, stride))
    if starts[-1] + lv < num_clips:
      starts.append(num_clips - lv)
    return [(s, s + lv) for s in starts]

  def batches(self, batch_size, process_index=0, process_count=1) -> Iterator[dict]:
    if self.with_labels:
      yield from batch_lib.eval_batches(self.split, batch_size, process_index=process_index,
                                        process_count=process_count)
      return
    yield from self._chunk_batches(batch_size, process_index, process_count)

  def _chunk_examples(self) -> Iterator[dict]:
    for r in self.records:
      video, text = self.store.video(r.vid), self.store.text(r.qid)
      windowed = len(video) > self.pad.max_v_l
      for s, e in self.chunks(len(video)):
        # A chunk is predicted as a video of its own; labels are not needed for inference.
        sub = r.replace(windows=(), relevant_clip_ids=None, saliency_scores=None, wrong_spans=None,
                        duration=(e - s) * self.pad.clip_len if windowed else r.duration)
        ex = build_example(sub, video[s:e], text, self.pad, batch_lib.seeded_rng(0, 'predict', r.qid))
        ex['chunk_start'] = np.int32(s)
        ex['num_clips_total'] = np.int32(len(video))
        yield ex

  def _chunk_batches(self, batch_size, process_index, process_count) -> Iterator[dict]:
    sl = batch_lib.local_slice(batch_size, process_index, process_count)
    pending = []
    for ex in self._chunk_examples():
      pending.append(ex)
      if len(pending) == batch_size:
        yield stack_examples(pending[sl])
        pending = []
    if pending:
      pad = batch_size - len(pending)
      filler = [dict(pending[0], sample_valid=np.float32(0)) for _ in range(pad)]
      yield stack_examples((pending + filler)[sl])


class MomentTask(task_lib.Task):
  """Base of the MR tasks: subclasses set `self.model` (a linen module) once dims are known (`build`)."""

  def __init__(self, config, dims=None):
    super().__init__(config, dims)
    self.model = None
    if self.dims:
      self.build()

  def build(self) -> None:
    """Constructs the model from self.config and self.dims (feature widths)."""
    raise NotImplementedError

  @property
  def video_dim(self) -> int:   # with the 2 TEF dims
    return int(self.dims['video_dim']) + 2

  @property
  def text_dim(self) -> int:
    return int(self.dims['text_dim'])

  # -- data -----------------------------------------------------------------------------------------
  def open_store(self, feature_dir: str, max_v_l: Optional[int] = None):
    """A converted ArrayRecord store (by its manifest) or a feature directory of an official layout."""
    d = self.config.data
    max_v_l = d.max_v_l if max_v_l is None else max_v_l
    if array_store_lib.is_array_store(feature_dir):
      return array_store_lib.ArrayStore(feature_dir, max_v_l=max_v_l, verify=d.get('verify_shards', 'all'),
                                        cache_bytes=int(d.get('source_cache_mb', 512)) << 20)
    return feat_lib.FeatureStore(feature_dir, max_v_l=max_v_l)

  @property
  def feature_source(self) -> str:
    return self.config.data.get('feature_source', 'auto')

  def pad_spec(self) -> PadSpec:
    d = self.config.data
    return PadSpec(max_v_l=d.max_v_l, max_q_l=d.max_q_l, max_windows=d.max_windows,
                   video_dim=int(self.dims['video_dim']), text_dim=int(self.dims['text_dim']), clip_len=d.clip_len)

  def _learn_dims(self, store) -> None:
    if not self.dims:
      self.dims = {'video_dim': store.video_dim, 'text_dim': store.text_dim}
      self.build()

  def load_records(self, paths: str, subset: int = 0, with_labels: bool = True):
    """(records, loading problems): every row that parses, and one problem per row or file that does not."""
    records, problems = validate_lib.load_checked(paths, with_labels=with_labels)
    return (records[:subset] if subset else records), problems

  def train_data(self) -> MomentTrainData:
    store = self.open_store(self.config.data.feature_dir)
    records, problems = self.load_records(self.config.data.train_annotations, self.config.data.subset)
    records = preflight(records, store, self.config, 'train', load_problems=problems)
    self._learn_dims(store)
    cache = feature_cache(store, records, self.feature_source)
    split = batch_lib.Split(records=records, cache=cache, spec=self.pad_spec())
    if self.config.data.shuffle_queries:  # control: every sample sees another query's text
      split.text_of = batch_lib.shuffled_text_map(records, self.config.seed)
    return self.wrap_train_split(split, records, cache)

  def wrap_train_split(self, split, records, cache) -> MomentTrainData:
    """Hook for augmentation / curriculum (AMR); default: the plain split, shuffled epochs."""
    del records, cache
    return MomentTrainData(split)

  def eval_data(self, annotations: str, feature_dir: str, *, with_labels: bool = True, subset: int = 0,
                what: str = 'val') -> MomentEvalData:
    sliding = (not with_labels) and bool(self.config.get('predict', {}).get('sliding_window', False))
    store = self.open_store(feature_dir, max_v_l=10**9 if sliding else None)
    records, problems = self.load_records(annotations, subset, with_labels=with_labels)
    return self.eval_data_from_records(records, store, with_labels=with_labels, what=what, load_problems=problems)

  def eval_data_from_records(self, records, store, *, with_labels: bool = True, what: str = 'val',
                             load_problems=()):
    predict_cfg = self.config.get('predict', {})
    sliding = (not with_labels) and bool(predict_cfg.get('sliding_window', False))
    problems = list(load_problems)
    if self.dims:   # a trained model: the store must have its widths (named, before any compute)
      problems += validate_lib.check_widths(store, self.dims, expected_by=f'the {self.name} model')
      if problems and any(p.scope == validate_lib.SCOPE_STORE for p in problems):
        raise DataError(f'{what}: ' + '\n'.join(str(p) for p in problems))
    if not with_labels:  # predicting needs no labels: only the query and the features are checked
      records = [r.replace(windows=(), relevant_clip_ids=None, saliency_scores=None, wrong_spans=None)
                 for r in records]
    records = preflight(records, store, self.config, what, load_problems=problems, with_labels=with_labels,
                        drop_bad=None if with_labels else False)
    self._learn_dims(store)
    return MomentEvalData(records, store, self.pad_spec(), with_labels=with_labels, sliding_window=sliding,
                          window_overlap=int(predict_cfg.get('window_overlap', 25)),
                          feature_source=self.feature_source)

  # -- linen glue -----------------------------------------------------------------------------------
  def init_model(self, rng, batch: dict, *extra, **kwargs):
    """The model's 'params' collection, initialised on `batch` (rng also seeds any dropout at init)."""
    return self.model.init({'params': rng, 'dropout': rng}, *model_inputs(batch), *extra, **kwargs)['params']

  def apply_model(self, params, batch: dict, *extra, dropout_rng=None, **kwargs):
    """The model's forward on `batch`; `dropout_rng` (None = no rng) drives dropout."""
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else {}
    return self.model.apply({'params': params}, *model_inputs(batch), *extra, rngs=rngs, **kwargs)

  # -- inference ------------------------------------------------------------------------------------
  def postprocess_records(self, host_outputs: dict, records, num_clips) -> list:
    """Numpy outputs of one batch + its records -> QVHighlights-format submission rows."""
    raise NotImplementedError

  def merge_chunks(self, record, chunks: list) -> dict:
    """One submission row from the sliding-window chunks [(start, end, total, outputs_i)] of a long video."""
    raise NotImplementedError(f'{type(self).__name__} does not merge sliding-window chunks')

  def predict(self, params, data: MomentEvalData, run, batch_size: int) -> list:
    rows = []
    if data.with_labels:
      for host_outputs, host_batch in run(self.eval_forward, params, data, batch_size):
        records = [data.by_qid[int(q)] for q in host_batch['qid']]
        rows += self.postprocess_records(host_outputs, records, host_batch['src_vid_mask'].sum(1).astype(int))
      return rows
    by_qid: dict = {}
    for host_outputs, host_batch in run(self.eval_forward, params, data, batch_size):
      for i, q in enumerate(host_batch['qid']):
        start, total = int(host_batch['chunk_start'][i]), int(host_batch['num_clips_total'][i])
        n = int(host_batch['src_vid_mask'][i].sum())
        by_qid.setdefault(int(q), []).append((start, start + n, total, {k: v[i] for k, v in host_outputs.items()}))
    for record in data.records:
      chunks = by_qid[record.qid]
      if len(chunks) == 1 and chunks[0][2] <= data.pad.max_v_l:
        start, end, _, out = chunks[0]
        rows += self.postprocess_records({k: v[None] for k, v in out.items()}, [record], np.array([end - start]))
      else:
        rows.append(self.merge_chunks(record, chunks, data.pad.clip_len))
    return rows
