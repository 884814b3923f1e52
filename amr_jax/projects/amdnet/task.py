"""AMDNet on the task contract: PRVR data (videos with all their captions), loss, BertAdam, corpus prediction.

Every video and every caption is encoded once at prediction; the similarity is scored in blocks on device.

Cross-device loss. The trainer jits `loss` with the batch placed as NamedSharding(mesh, P('data')): every [B, ...]
entry (videos, their C caption slots, sample_valid) is split over the data axis, params are replicated. The
per-video and per-caption parts of the forward (clip pooling, projections, attentions, moments, the query
projection) are row-wise and run on each device's own rows. The partially relevant NCE needs every caption of the
global batch against every video of it: `model.clip_scores` is one einsum of the [B*C, d] queries with the
[B, N, d] clip tokens, both sharded on their leading axis. jit sees global arrays, so XLA's SPMD partitioner
all-gathers the sharded operand it needs (the clip tokens) and each device computes its row block of the
[B*C, B] score matrix; the log-sum-exps along the sharded axis and the masked means are partial reductions
completed by an all-reduce, and the backward pass turns the all-gather into a reduce-scatter. Nothing in the code
names a device: the loss is the global-batch loss whatever the mesh (tests/test_amdnet_train.py: 8 devices = 1
device for the loss and every gradient; 'hash' dropout masks do not depend on the sharding).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, Optional

import jax
import numpy as np

from amr_jax import task as task_lib
from amr_jax.data import planted_prvr
from amr_jax.data import prvr as prvr_data
from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics import prvr_evaluator
from amr_jax.ops import layers
from amr_jax.projects.amdnet import losses as loss_lib
from amr_jax.projects.amdnet import model as model_lib
from amr_jax.projects.amdnet import optim as optim_lib
from data_pipelines import prvr_batches


class DataError(ValueError):
  """Training or evaluation data failed validation (every problem listed, one per line)."""


_unit_vectors = jax.jit(layers.l2_normalize, static_argnums=1)   # F.normalize(x, dim=-1, eps), compiled per shape


def max_dot_scores(query_unit, token_unit):
  """[Bq, Bv] max over tokens of query . token (one similarity block of unit vectors: the cosine max)."""
  return model_lib.clip_scores(query_unit, token_unit, normalize=False)[0]


class AMDNetTask(task_lib.Task):
  """AMDNet (`configs/amdnet.py`). dims: {'video_dim', 'text_dim'} (the store's feature widths)."""

  name = 'amdnet'
  default_eval_batch_size = 100

  def __init__(self, config, dims: Optional[dict] = None):
    super().__init__(config, dims)
    self.loss_cfg = loss_lib.AMDNetLossConfig.from_config(config.loss)
    self.model_cfg: Optional[model_lib.AMDNetConfig] = None
    self.model: Optional[model_lib.AMDNet] = None
    if self.dims:
      self.build()

  def build(self) -> None:
    """The network config and module from config.model / config.quirks and the data's widths."""
    self.model_cfg = model_lib.AMDNetConfig.from_configs(self.config.model, self.config.quirks,
                                                         int(self.dims['video_dim']), int(self.dims['text_dim']))
    self.model = model_lib.AMDNet(self.model_cfg)

  # -- data -----------------------------------------------------------------------------------------
  def batch_config(self, *, for_eval: bool = False) -> prvr_batches.PrvrBatchConfig:
    """PrvrBatchConfig from config.data; evaluation keeps every caption of a video (scored one by one)."""
    cfg = prvr_batches.PrvrBatchConfig.from_config(self.config.data)
    if for_eval:
      cfg = dataclasses.replace(cfg, max_captions_per_video=0, caption_overflow='truncate')
    return cfg

  def open_store(self, feature_dir: str) -> prvr_data.PrvrStore:
    """The feature store under `feature_dir`: the MS-SL root (`{feature_dir}/{collection}/{FeatureData,
    TextData}`) or the collection folder itself (`{feature_dir}/{FeatureData,TextData}`, named by its basename)."""
    d = self.config.data
    root, collection = str(feature_dir), str(d.collection)
    if (os.path.isdir(os.path.join(root, 'FeatureData')) and
        not os.path.isdir(os.path.join(root, collection, 'FeatureData'))):
      root, collection = os.path.split(os.path.normpath(os.path.abspath(root)))
    return prvr_data.PrvrStore.open(root, collection, visual_feature=d.get('visual_feature') or None,
                                    text_feature=d.get('text_feature') or None)

  def load_split(self, annotations: str, feature_dir: str, *, what: str, subset: int = 0,
                 batch_cfg: Optional[prvr_batches.PrvrBatchConfig] = None,
                 drop_bad: Optional[bool] = None) -> prvr_batches.PrvrSplit:
    """Reads, validates (every problem in one pass: file, line, vid / cap_id, field) and loads one split.

    annotations: a `{collection}{split}.caption.txt` file, or a shipped Charades-STA txt / QVH jsonl (one caption
    per record, cap_id `{vid}#{qid}`). subset > 0 keeps the first N captions.

    Raises:
      DataError: every problem, one line each (`drop_bad` drops the bad captions / videos instead).
    """
    d = self.config.data
    drop = bool(d.get('drop_bad', False)) if drop_bad is None else drop_bad
    if not annotations:
      raise DataError(f'{what}: no annotation file given (config.data.{what}_annotations)')
    collection = prvr_evaluator.read_collection(annotations, name=str(d.collection), split=what)
    if subset and subset < len(collection):
      keep = collection.subset(range(subset))
      last_line = max((c.line for c in keep.captions), default=0)
      keep.problems = [p for p in collection.problems if not p.line or p.line <= last_line]
      collection = keep
    fatal = [p for p in collection.problems if p.scope == prvr_data.SCOPE_STORE]
    if fatal:
      raise DataError(f'{what}: ' + '\n'.join(str(p) for p in fatal))
    try:
      store = self.open_store(feature_dir)
    except prvr_data.PrvrDataError as e:
      raise DataError(f'{what}: ' + '\n'.join(str(p) for p in e.problems)) from None
    problems = prvr_data.validate(collection, store, video_dim=self.dims.get('video_dim'),
                                  text_dim=self.dims.get('text_dim'))
    if problems:
      stop = [p for p in problems if p.scope == prvr_data.SCOPE_STORE]
      if drop and not stop:
        kept, dropped = prvr_data.drop_bad(collection, problems)
        print(f'[{what}] {prvr_data.summarize(collection, problems)}; dropped: '
              + ', '.join(c.cap_id for c in dropped[:20]) + (' ...' if len(dropped) > 20 else ''), file=sys.stderr)
        if not len(kept):
          raise DataError(f'{what}: every caption was dropped by validation')
        collection = kept
      else:
        hint = '' if stop else ' (set --config.data.drop_bad=True to drop them)'
        raise DataError(f'{what}: {len(problems)} data problem(s){hint}:\n' + '\n'.join(str(p) for p in problems))
    try:
      split = prvr_batches.PrvrSplit(collection, store, batch_cfg or self.batch_config())
    except prvr_data.PrvrDataError as e:
      raise DataError(f'{what}: ' + '\n'.join(str(p) for p in e.problems)) from None
    if not self.dims:
      self.dims = {'video_dim': split.video_dim, 'text_dim': split.text_dim}
      self.build()
    return split

  def train_data(self) -> prvr_batches.PrvrTrainData:
    d = self.config.data
    split = self.load_split(d.train_annotations, d.feature_dir, what='train', subset=int(d.get('subset', 0)))
    if d.get('shuffle_captions', False):  # control: every caption trains with another caption's text features
      split.shuffle_texts(planted_prvr.shuffled_caption_map(split.collection, int(self.config.seed)))
    return prvr_batches.PrvrTrainData(split)

  def eval_data(self, annotations: str, feature_dir: str, *, with_labels: bool = True, subset: int = 0,
                what: str = 'val') -> prvr_batches.PrvrEvalData:
    split = self.load_split(annotations, feature_dir, what=what, subset=int(subset or 0),
                            batch_cfg=self.batch_config(for_eval=True), drop_bad=None if with_labels else False)
    return prvr_batches.PrvrEvalData(split, with_labels=with_labels)

  # -- parameters and training ----------------------------------------------------------------------
  def init_params(self, rng, example_batch: dict, teacher_params: Any = None) -> tuple:
    del example_batch, teacher_params   # the shapes depend on the config and dims only
    return model_lib.init_params(self.model_cfg, rng), None

  def loss(self, params, frozen_params, batch: dict, rng, train: bool = True) -> tuple:
    del frozen_params
    return loss_lib.batch_loss(params, batch, rng, self.model_cfg, self.loss_cfg, train=train)

  def optimizer(self, steps_per_epoch: int, num_steps: int):
    """BertAdam (or the quirk-16 AdamW) with warmup_linear over t_total = the run's total steps."""
    del steps_per_epoch
    return optim_lib.make_optimizer(self.config.optim, self.config.quirks, t_total=int(num_steps))

  # -- inference ------------------------------------------------------------------------------------
  def eval_forward(self, params, batch: dict) -> dict:
    """Eval-mode encodings of whatever the batch holds: 'video_tokens' [B, T, d] from video_feat / video_mask
    (T = N clip tokens, or H moment features in score_mode 'moment'), 'query_emb' [B, d] from caption_feat."""
    out = {}
    variables = {'params': params}
    if 'video_feat' in batch:
      video = self.model.apply(variables, batch['video_feat'], batch['video_mask'], train=False,
                               method=model_lib.AMDNet.encode_videos)
      out['video_tokens'] = model_lib.retrieval_tokens(video, self.model_cfg)
    if 'caption_feat' in batch:
      out['query_emb'] = self.model.apply(variables, batch['caption_feat'], train=False,
                                          method=model_lib.AMDNet.encode_queries)
    return out

  def encode(self, params, data: prvr_batches.PrvrEvalData, run, batch_size: int) -> tuple:
    """(video tokens [Nv, T, d], query embeddings [Nq, d]) as host arrays: every video and caption once."""
    return self.video_tokens(params, data, run, batch_size), self.query_embeddings(params, data, run, batch_size)

  def video_tokens(self, params, data: prvr_batches.PrvrEvalData, run, batch_size: int) -> np.ndarray:
    """Video tokens [Nv, T, d] (host), every video encoded once through `run`, in `data.video_ids` order."""
    tokens: Optional[np.ndarray] = None
    for host_outputs, host_batch in run(self.eval_forward, params, data.videos(), batch_size):
      block = host_outputs['video_tokens']
      if tokens is None:
        tokens = np.zeros((len(data.video_ids),) + block.shape[1:], block.dtype)
      tokens[host_batch['video_index']] = block
    return tokens

  def query_embeddings(self, params, data: prvr_batches.PrvrEvalData, run, batch_size: int) -> np.ndarray:
    """Query embeddings [Nq, d] (host), every caption encoded once through `run`, in `data.cap_ids` order."""
    queries: Optional[np.ndarray] = None
    for host_outputs, host_batch in run(self.eval_forward, params, data, batch_size):
      block = host_outputs['query_emb']
      if queries is None:
        queries = np.zeros((len(data),) + block.shape[1:], block.dtype)
      queries[host_batch['caption_index']] = block
    return queries

  def similarity(self, queries: np.ndarray, tokens: np.ndarray, *, caption_block: Optional[int] = None,
                 video_block: Optional[int] = None, to_host: bool = True):
    """[Nq, Nv] float32 = max over tokens of cos(query, token) (`model.score`), scored on device one
    [caption_block x video_block] block at a time (default eval.query_batch_size x eval.context_batch_size),
    every block in one jitted program: no [Nq, Nv, T] tensor ever exists. Both sides are normalised once
    (F.normalize), not once per block. to_host=False returns the device array (for on-device ranks).

    The block shape changes how XLA:CPU tiles the dot, and with it the rounding of some shapes: on the TVR-sized
    benchmark 8, 50, 100 or 200 caption rows give bitwise the same scores, while 128, 256, 512 or 1024 rows
    move scores by up to 2.4e-7 (and, at near-ties, a few GT ranks). Ranks are exact for the scores returned."""
    eps = float(self.model_cfg.normalize_eps)
    ev = self.config.eval
    return prvr_metrics.blocked_scores(
        max_dot_scores, _unit_vectors(queries, eps), _unit_vectors(tokens, eps),
        caption_block=int(caption_block or ev.get('query_batch_size', 50)),
        video_block=int(video_block or ev.get('context_batch_size', 100)), to_host=to_host)

  def predict(self, params, data: prvr_batches.PrvrEvalData, run, batch_size: int) -> Dict[str, Any]:
    """{'scores' [Nq, Nv] float32, 'cap_ids', 'vid_ids'}: the similarity of every caption (file order) and every
    video (first appearance: the original's tie order), each encoded once through `run` (sharded)."""
    tokens, queries = self.encode(params, data, run, batch_size)
    return {'scores': self.similarity(queries, tokens), 'cap_ids': list(data.cap_ids),
            'vid_ids': list(data.video_ids)}

  def write_predictions(self, predictions: Dict[str, Any], path: str) -> None:
    """`.npz`: the score-file format (scores, cap_ids, vid_ids); `.jsonl`: per caption its top-100 videos."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix == '.npz':
      prvr_metrics.write_score_file(path, predictions['scores'], predictions['cap_ids'], predictions['vid_ids'])
    elif suffix == '.jsonl':
      prvr_metrics.write_ranking_file(path, predictions['scores'], predictions['cap_ids'], predictions['vid_ids'])
    else:
      raise ValueError(f'{path}: unknown submission format {suffix!r}; use .npz (score matrix) or .jsonl '
                       '(top-100 rankings)')

  def diagnostics(self, params, data, run, batch_size: int) -> dict:
    """The chance SumR of the val split (what a random ranking gets), logged next to the evaluator's."""
    del params, run, batch_size
    return {'chance_SumR': prvr_metrics.chance_metrics(len(data.video_ids))['SumR']}


TASK = AMDNetTask
