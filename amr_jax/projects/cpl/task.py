"""CPL on the task contract: weak-MR data (no timestamp in training), CPL loss, fairseq Adam, NLL-ranked proposals.

The vocabulary is counted from the training queries and saved in `dims['vocab']`, so an export rebuilds the text side.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import task as task_lib
from amr_jax.data import planted_weak
from amr_jax.data import vocab as vocab_lib
from amr_jax.data import weak_mr
from amr_jax.projects.cpl import inference as inference_lib
from amr_jax.projects.cpl import losses as losses_lib
from amr_jax.projects.cpl import model as model_lib
from amr_jax.projects.cpl import optim as optim_lib
from data_pipelines import weak_batches

# Text-side switches and their defaults (config.text may override any; configs/cpl.py has none today).
TEXT_DEFAULTS = dict(tokenizer='auto', pos_tagger='auto', tag_rule='substring', count_eval=True,
                     word_vectors='planted', word_vector_seed=0, missing_word='error', require_vector=True)


def _get(config, section: str, key: str, default):
  """config.<section>.<key>, or `default` when the section or the key is absent."""
  part = config.get(section, None)
  if part is None:
    return default
  return part.get(key, default)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """The trainer's epoch length (floor, at least 1): the negative schedule's epoch = step // this + 1 (1-based)."""
  return max(num_examples // global_batch, 1)


class WeakTrainData(task_lib.TrainData):
  """Train batches of a `WeakSplit`: TRAIN_KEYS + 'epoch' [B] int32 (1-based, from the step) + 'sample_index' [B]
  int32 (row of the global batch: it keys the per-row masked-word draw, so any device split draws the same)."""

  def __init__(self, split: weak_batches.WeakSplit, mask_in_loader: bool = False):
    self.split = split
    self.mask_in_loader = mask_in_loader
    self.spec = task_lib.spec_of(self.batch(0, 0, 2))

  def __len__(self) -> int:
    return len(self.split)

  def batch(self, seed, step, global_batch, process_index=0, process_count=1, indices=None) -> dict:
    index_fn = None if indices is None else (lambda _: np.asarray(indices))
    out = weak_batches.make_train_batch(self.split, seed, step, global_batch, process_index, process_count,
                                        index_fn, mask_in_loader=self.mask_in_loader)
    rows = np.arange(global_batch, dtype=np.int32)[weak_batches.local_slice(global_batch, process_index,
                                                                             process_count)]
    epoch = step // steps_per_epoch(len(self.split), global_batch) + 1
    out['epoch'] = np.full(len(rows), epoch, np.int32)
    out['sample_index'] = rows
    return out


class WeakEvalData(task_lib.EvalData):
  """Eval batches in record order: TRAIN_KEYS + 'sample_index' (the record index: it seeds the eval word mask)
  + duration / gt_sec; ground truth = one dict per record {qid, vid, duration, window} (None without labels)."""

  def __init__(self, split: weak_batches.WeakSplit, with_labels: bool, mask_in_loader: bool = False, seed: int = 0):
    self.split = split
    self.mask_in_loader = mask_in_loader
    self.seed = seed
    self.records = split.records
    self.ground_truth = None
    if with_labels:
      self.ground_truth = [{'qid': r.qid, 'vid': r.vid, 'duration': float(r.duration),
                            'window': [float(x) for x in r.windows[0]]} for r in self.records]
    self.spec = task_lib.spec_of(next(self.batches(2)))

  def __len__(self) -> int:
    return len(self.split)

  def batches(self, batch_size, process_index=0, process_count=1):
    sl = weak_batches.local_slice(batch_size, process_index, process_count)
    n = len(self.split)
    for b, batch in enumerate(weak_batches.eval_batches(self.split, batch_size, process_index, process_count,
                                                        mask_in_loader=self.mask_in_loader, seed=self.seed)):
      index = np.arange(b * batch_size, (b + 1) * batch_size)
      index = np.where(index < n, index, b * batch_size).astype(np.int32)   # padding = copies of the first row
      batch['sample_index'] = index[sl]
      batch.pop('qid', None)          # int64: looked up from the records by sample_index instead
      yield batch


class CPLTask(task_lib.Task):
  """CPL (`configs/cpl.py`). dims: frame_dim, word_dim, vocab_size (K + 1) and vocab (the saved vocabulary)."""

  name = 'cpl'
  default_eval_batch_size = 32

  def __init__(self, config, dims: Optional[dict] = None):
    super().__init__(config, dims)
    self.loss_cfg = losses_lib.CPLLossConfig.from_config(config)
    self.model = None
    self._eval_records = None
    if 'vocab' in self.dims:
      self.build()

  # -- model ----------------------------------------------------------------------------------------------
  def model_dims(self) -> dict:
    """What CPLModelConfig takes from dims (the max epoch = the run's epochs unless model.max_epoch is set)."""
    return {k: self.dims[k] for k in ('frame_dim', 'word_dim', 'vocab_size') if k in self.dims}

  def make_model(self, model_cfg: model_lib.CPLModelConfig):
    return model_lib.CPL(model_cfg)

  def build(self) -> None:
    self.model_cfg = model_lib.CPLModelConfig.from_config(self.config, self.model_dims())
    self.model = self.make_model(self.model_cfg)

  # -- text side ------------------------------------------------------------------------------------------
  def text_option(self, key: str):
    if key == 'word_dim':
      return int(self.config.data.get('word_dim', 300))
    return _get(self.config, 'text', key, TEXT_DEFAULTS[key])

  def text_side(self, train_sentences=(), eval_sentences=(), sources=()):
    """(encoder, word table): counted from the sentences, or from the saved vocabulary in dims."""
    vocab = vocab_lib.Vocabulary.from_json(self.dims['vocab'], 'dims.vocab') if 'vocab' in self.dims else None
    opt = self.text_option
    return vocab_lib.build_text_side(
        train_sentences, eval_sentences, top_k=int(self.config.data.vocab_size), tokenizer=opt('tokenizer'),
        pos_tagger=opt('pos_tagger'), tag_rule=opt('tag_rule'), count_eval=bool(opt('count_eval')),
        word_vectors=opt('word_vectors'), word_dim=opt('word_dim'), word_vector_seed=int(opt('word_vector_seed')),
        missing_word=opt('missing_word'), require_vector=bool(opt('require_vector')), vocab=vocab,
        sources=sources)

  def pad_spec(self) -> weak_batches.WeakPadSpec:
    d = self.config.data
    return weak_batches.WeakPadSpec(num_clips=int(d.max_num_frames), max_words=int(d.max_num_words),
                                    pooling=str(d.get('pooling', 'cpl')))

  def load_records(self, annotations, *, need_durations: bool, subset: int = 0):
    durations = None
    sources = self.config.data.get('durations_from', '')
    if sources:
      durations = weak_mr.read_durations(sources)
    records = weak_mr.load_weak_many(annotations, durations=durations)
    return records[:subset] if subset else records

  # -- input pipeline -------------------------------------------------------------------------------------
  def train_data(self) -> WeakTrainData:
    d = self.config.data
    train = self.load_records(d.train_annotations, need_durations=False, subset=int(d.get('subset', 0)))
    eval_sentences = []
    if bool(self.text_option('count_eval')) and d.get('val_annotations', ''):
      eval_sentences = [r.query for r in weak_mr.load_weak_many(d.val_annotations)]
    self.dims.pop('vocab', None)
    encoder, table = self.text_side([r.query for r in train], eval_sentences,
                                    sources=[str(d.train_annotations)])
    store = weak_mr.WeakFeatureStore(d.feature_dir)
    frame_dim = d.get('frame_dim', None)
    train = weak_mr.preflight(train, store, encoder, what=f'training data {d.train_annotations}', need_labels=False,
                              drop=bool(d.get('drop_bad', False)), frame_dim=frame_dim, log=sys.stderr)
    query_of = None
    if d.get('query_map', ''):     # the shuffled-query control: train on other queries' sentences
      query_of = planted_weak.load_shuffled_map(d.query_map)
    split = weak_batches.build_weak_split(train, store, encoder, table, self.pad_spec(), query_of=query_of)
    self.dims = {'frame_dim': int(split.frame_dim), 'word_dim': int(table.shape[1]),
                 'vocab_size': int(encoder.vocab.size), 'vocab': encoder.vocab.to_json()}
    self.build()
    return WeakTrainData(split, bool(d.get('mask_in_loader', False)))

  def eval_data(self, annotations, feature_dir, *, with_labels: bool = True, subset: int = 0, **_) -> WeakEvalData:
    if self.model is None:
      raise ValueError('CPLTask.eval_data: no vocabulary yet (call train_data() or build the task from a run)')
    records = self.load_records(annotations, need_durations=True, subset=subset)
    encoder, table = self.text_side()
    store = weak_mr.WeakFeatureStore(feature_dir)
    records = weak_mr.preflight(records, store, encoder, what=f'evaluation data {annotations}', need_labels=True,
                                drop=bool(self.config.data.get('drop_bad', False)), frame_dim=self.dims['frame_dim'],
                                log=sys.stderr)
    split = weak_batches.build_weak_split(records, store, encoder, table, self.pad_spec())
    seed = int(_get(self.config, 'inference', 'eval_mask_seed', 0))
    return WeakEvalData(split, with_labels, bool(self.config.data.get('mask_in_loader', False)), seed)

  # -- parameters -----------------------------------------------------------------------------------------
  def init_params(self, rng, example_batch: dict, teacher_params: Any = None) -> tuple:
    del teacher_params
    batch = {k: jnp.asarray(v) for k, v in example_batch.items()}
    batch.setdefault('masked_words', jnp.zeros(batch['words_mask'].shape, jnp.int32))
    variables = self.model.init({'params': rng, 'dropout': rng}, *model_lib.model_inputs(batch), train=False,
                                negatives=True)
    return variables['params'], None

  # -- training -------------------------------------------------------------------------------------------
  def loss(self, params, frozen_params, batch: dict, rng, train: bool = True) -> tuple:
    del frozen_params
    total, aux = losses_lib.batch_loss(self.model, params, batch, self.loss_cfg, rng, train=train)
    return total, {f'loss/{k}': v for k, v in losses_lib.scalar_metrics(aux).items()}

  def optimizer(self, steps_per_epoch: int, num_steps: int):
    del steps_per_epoch, num_steps
    return optim_lib.make_optimizer(self.config.optim)

  # -- inference ------------------------------------------------------------------------------------------
  def eval_forward(self, params, batch: dict) -> dict:
    return inference_lib.eval_forward(
        self.model, params, batch, self.loss_cfg, seed=int(_get(self.config, 'inference', 'eval_mask_seed', 0)),
        random_mask=bool(_get(self.config, 'quirks', 'eval_random_word_mask', True)),
        eval_epoch=int(_get(self.config, 'inference', 'eval_epoch', 0)))

  def predict(self, params, data: WeakEvalData, run, batch_size: int) -> list:
    self._eval_records = data.records
    try:
      return super().predict(params, data, run, batch_size)
    finally:
      self._eval_records = None

  def postprocess(self, host_outputs: dict, host_batch: dict) -> List[dict]:
    """Rows of the weak-MR prediction format: qid, vid, pred_windows_sec (top-5 by NLL, seconds), pred_top1_sec
    (the configured top-1), and every top-1 variant (loss, vote Charades-weighted, vote uniform) as fields."""
    records = [self._eval_records[int(i)] for i in host_batch['sample_index']]
    top_k = int(_get(self.config, 'inference', 'top_k', 5))
    rows = inference_lib.prediction_rows(
        {k: np.asarray(v) for k, v in host_outputs.items()}, np.array([r.duration for r in records], np.float64),
        top_k=top_k, dataset_name=str(self.config.data.get('dataset', 'CharadesSTA')),
        top1_mode=str(_get(self.config, 'inference', 'top1', 'loss')),
        vote_weighting=str(_get(self.config, 'quirks', 'vote_weighting', 'dataset')))
    out = []
    for record, row in zip(records, rows):
      out.append({
          'qid': record.qid, 'vid': record.vid, 'duration': float(record.duration),
          'pred_windows_sec': row['top5_windows_sec'],
          'pred_top1_sec': row['pred_windows_sec'][0],
          'top1_loss_sec': row['top1_loss']['window_sec'],
          'top1_vote_charades_sec': row['top1_vote_charades']['window_sec'],
          'top1_vote_activitynet_sec': row['top1_vote_activitynet']['window_sec'],
          'nll_per_proposal': row['nll_per_proposal'], 'rank_order': row['rank_order']})
    return out


TASK = CPLTask
