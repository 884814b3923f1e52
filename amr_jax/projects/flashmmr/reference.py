"""Parity check of the Flax FlashMMR port against a PyTorch reference fixture folder.

Built from the fixture's tiny_config.json: forward, losses, grads, optimiser step, submissions and PV verifier.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amr_jax.projects.flashmmr import losses as losses_lib
from amr_jax.projects.flashmmr import postprocess as post_lib
from amr_jax.projects.flashmmr import verifier as verifier_lib
from amr_jax.projects.flashmmr.model import FlashMMR, FlashMMRModelConfig, real_negative_mask
from amr_jax.projects.flashmmr import torch_names as names_lib

CheckRow = Tuple[str, float, float, bool]

ATOL = 1e-5
RTOL = 1e-5
# End-to-end submissions round model outputs to 4 decimals, so a 1e-6 difference can flip one quantum.
ROUNDING_QUANTUM = 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Comparison helpers.


def compare_arrays(name: str, mine: Any, ref: Any, atol: float = ATOL, rtol: float = RTOL) -> CheckRow:
  """Elementwise |a − b| ≤ atol OR |a − b| ≤ rtol·|b| (equal infs / nans count as equal).

  Returns:
    (name, max_abs_err, max_rel_err, ok); max_rel_err is taken over the elements that exceed atol (0 if none).
  """
  a = np.asarray(mine, np.float64)
  b = np.asarray(ref, np.float64)
  if a.shape != b.shape:
    if a.size == b.size == 1:
      a, b = a.reshape(()), b.reshape(())
    else:
      return (f"{name} (shape {a.shape} vs {b.shape})", float("inf"), float("inf"), False)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid="ignore"):
    err = np.where(same, 0.0, np.abs(a - b))
  err = np.where(np.isnan(err), np.inf, err)
  need_rel = err > atol
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(need_rel, err / np.abs(b), 0.0)
  rel = np.where(np.isnan(rel), np.inf, rel)
  ok = bool(np.all(~need_rel | (rel <= rtol)))
  max_abs = float(err.max()) if err.size else 0.0
  max_rel = float(rel.max()) if rel.size else 0.0
  return (name, max_abs, max_rel, ok)


def _bool_row(name: str, ok: bool) -> CheckRow:
  return (name, 0.0 if ok else float("inf"), 0.0 if ok else float("inf"), bool(ok))


def _score_order_row(name: str, my_order: np.ndarray, ref_order: np.ndarray, ref_scores: np.ndarray,
                     atol: float = 1e-6) -> CheckRow:
  """Orders agree up to permutations inside groups of reference scores tied within atol."""
  sorted_ref = np.take_along_axis(ref_scores, ref_order, axis=-1)
  sorted_mine = np.take_along_axis(ref_scores, my_order, axis=-1)
  err = np.abs(sorted_ref - sorted_mine)
  is_perm = all(sorted(m) == sorted(r) for m, r in zip(my_order.reshape(-1, my_order.shape[-1]).tolist(),
                                                          ref_order.reshape(-1, ref_order.shape[-1]).tolist()))
  exact = np.array_equal(my_order, ref_order)
  return (name, 0.0 if exact else float(err.max()), 0.0, bool(exact or (is_perm and err.max() <= atol)))


# ----------------------------------------------------------------------------------------------------------------
# Optimiser (clip_grad_norm_ + torch AdamW; frozen params get neither update nor decay).


def torch_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`torch.nn.utils.clip_grad_norm_`: scale by min(1, max_norm / (‖g‖ + 1e-6))."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    scale = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree_util.tree_map(lambda g: g * scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def flashmmr_trainable_labels(params: Mapping[str, Any], config: FlashMMRModelConfig) -> Any:
  """'frozen' for the unused trainable text position table (use_txt_pos=False), else 'train'."""
  frozen = set() if config.use_txt_pos else {"text_position_table", "text_position_norm_scale",
                                              "text_position_norm_bias"}
  return {k: jax.tree_util.tree_map(lambda _: "frozen" if k in frozen else "train", v) for k, v in params.items()}


def flashmmr_optimizer(params: Mapping[str, Any], config: FlashMMRModelConfig, learning_rate: float = 5e-4,
                       weight_decay: float = 1e-4, clip_max_norm: float = 0.1, b1: float = 0.9, b2: float = 0.999,
                       eps: float = 1e-8) -> optax.GradientTransformation:
  """FlashVTG optimiser: clip_grad_norm_(0.1) then AdamW(lr 5e-4, wd 1e-4); unused params are skipped."""
  train = optax.chain(torch_clip_by_global_norm(clip_max_norm),
                      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()},
                               flashmmr_trainable_labels(params, config))


# ----------------------------------------------------------------------------------------------------------------
# Fixture loading.


def _load_npz(path: str) -> Dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def configs_from_fixture(tiny_config: Mapping[str, Any]):
  """(model, loss, postprocess, verifier) configs, every value read from the fixture's tiny_config."""
  model_cfg = FlashMMRModelConfig.from_fixture(tiny_config)
  loss_cfg = losses_lib.FlashMMRLossConfig.from_fixture(tiny_config)
  args = dict(tiny_config.get("args", {}))
  args.update({k: v for k, v in tiny_config.get("TINY", {}).items() if k not in args})
  post_cfg = post_lib.FlashMMRPostprocessConfig(
      clip_length=float(args.get("clip_length", 2.0)), nms_thd=float(args.get("nms_thd", 0.7)),
      max_num_moment=model_cfg.max_num_moment)
  verifier_cfg = verifier_lib.FlashMMRVerifierConfig(
      input_dim=model_cfg.hidden_dim, hidden_dim=int(args.get("pv_hidden_dim", 128)),
      clips_per_second=1.0 / float(args.get("clip_length", 2.0)))
  return model_cfg, loss_cfg, post_cfg, verifier_cfg


def _targets_from_inputs(inputs: Mapping[str, np.ndarray]) -> Dict[str, jnp.ndarray]:
  gt = inputs["gt_windows_sec"]
  return dict(gt_windows_sec=jnp.asarray(gt), gt_valid=jnp.asarray(np.all(np.isfinite(gt), axis=-1)),
              fps=jnp.asarray(inputs["fps"]), saliency_all_labels=jnp.asarray(inputs["saliency_all_labels"]),
              saliency_pos_labels=jnp.asarray(inputs["saliency_pos_labels"]),
              saliency_neg_labels=jnp.asarray(inputs["saliency_neg_labels"]))


# ----------------------------------------------------------------------------------------------------------------
# Training-branch checks.

_DIRECT_OUTPUTS = ("saliency_scores", "t2vattnvalues", "point", "video_emb", "query_emb", "video_msk",
                   "out_class", "out_coord", "dummy_tokens")


def _check_training_branch(prefix: str, out: Dict[str, Any], terms: Dict[str, Any], ref: Mapping[str, np.ndarray],
                           real_neg: np.ndarray) -> List[CheckRow]:
  rows: List[CheckRow] = []
  inter = out["intermediates"]
  for key in _DIRECT_OUTPUTS:
    if key in ref:
      rows.append(compare_arrays(f"{prefix}outputs.{key}", out[key], ref[key]))
  levels = sorted(k for k in ref if k.startswith("pymid_msk.level"))
  for k, key in enumerate(levels):
    rows.append(compare_arrays(f"{prefix}outputs.{key}", out["pymid_msk_levels"][k], ref[key]))
  if "real_neg_mask" in ref:
    rows.append(_bool_row(f"{prefix}outputs.real_neg_mask", np.array_equal(real_neg, ref["real_neg_mask"])))
  for key in ("saliency_scores_neg", "t2vattnvalues_neg", "src_txt_mask_neg"):
    if key in ref:
      rows.append(compare_arrays(f"{prefix}outputs.{key}", np.asarray(out[key])[real_neg], ref[key]))
  # Ranking: the jitted model sorts stably; torch's CPU introsort order (which decides exactly tied padded
  # points) is reproduced on the host from the port's own scores. Near-ties within 1e-6 may still permute.
  ref_scores = ref["inter.score_sigmoid"][..., 0]
  ref_order = ref["inter.pred_spans_order"]
  my_scores = np.asarray(out["intermediates"]["score_sigmoid"])[..., 0]
  my_order = np.stack([post_lib.torch_sort_descending(row) for row in my_scores])
  rows.append(_score_order_row(f"{prefix}outputs.inter.pred_spans_order", my_order, ref_order, ref_scores))
  mine_sorted = np.take_along_axis(np.asarray(out["decoded_unsorted"]), my_order[..., None], axis=1)
  rows.append(compare_arrays(f"{prefix}outputs.pred_spans", mine_sorted, ref["pred_spans"]))
  for key in sorted(ref):
    if not key.startswith("inter.") or key == "inter.pred_spans_order":
      continue
    name = key[len("inter."):]
    if name not in inter:
      rows.append((f"{prefix}outputs.{key} (not produced)", float("inf"), float("inf"), False))
      continue
    mine = np.asarray(inter[name])
    if name.startswith("neg."):
      mine = mine[real_neg]
    rows.append(compare_arrays(f"{prefix}outputs.{key}", mine, ref[key]))
  for key in sorted(ref):
    if key.startswith(("loss.", "loss_weighted.", "loss_saliency_part.", "loss_target.")) or key == "loss_total":
      if key == "loss_target.gt_boundary_sec":
        continue
      if key not in terms:
        rows.append((f"{prefix}losses.{key} (not produced)", float("inf"), float("inf"), False))
        continue
      rows.append(compare_arrays(f"{prefix}losses.{key}", terms[key], ref[key]))
  return rows


def _make_loss_fn(model: FlashMMR, loss_cfg, inputs):
  targets = _targets_from_inputs(inputs)

  def loss_fn(params, real_neg):
    out = model.apply({"params": params}, inputs["src_vid"], inputs["src_vid_mask"], inputs["src_txt"],
                      inputs["src_txt_mask"], real_neg)
    total, terms = losses_lib.flashmmr_losses(out, targets, loss_cfg)
    return total, (out, terms)

  return loss_fn


def _check_grads(prefix: str, grads_flax, model_cfg, ref_grads: Mapping[str, np.ndarray]) -> List[CheckRow]:
  mine = names_lib.flashmmr_flax_to_torch(jax.tree_util.tree_map(np.asarray, grads_flax), model_cfg)
  rows = []
  for name in ref_grads:
    if name not in mine:
      rows.append((f"{prefix}grads.{name} (not produced)", float("inf"), float("inf"), False))
      continue
    rows.append(compare_arrays(f"{prefix}grads.{name}", mine[name], ref_grads[name]))
  return rows


# ----------------------------------------------------------------------------------------------------------------
# Inference, submissions and PV.


def _inference_queries(inputs, infer, tiny_config) -> List[Dict[str, Any]]:
  batch = tiny_config["BATCH"]
  queries = []
  for q in range(len(batch["vid_lens"])):
    lv, lt = int(batch["vid_lens"][q]), int(batch["txt_lens"][q])
    queries.append(dict(qid=batch["qids"][q], query=batch["queries"][q], vid=batch["vids"][q],
                        duration=batch["durations"][q], src_vid=inputs["src_vid"][q, :lv],
                        src_txt=inputs["src_txt"][q, :lt]))
  extra = tiny_config.get("inference_extra_sample")
  if extra is not None:
    q = len(queries)
    queries.append(dict(qid=extra["qid"], query=extra["query"], vid=extra["vid"], duration=extra["duration"],
                        src_vid=infer[f"sample{q}.src_vid"], src_txt=infer[f"sample{q}.src_txt"]))
  return queries


def _submission_rows(prefix: str, mine: Sequence[Dict[str, Any]], ref: Sequence[Dict[str, Any]],
                     atol: float) -> List[CheckRow]:
  """Compares submission records row by row (the torch tie order of the 0-score tail is reproduced)."""
  rows: List[CheckRow] = []
  if len(mine) != len(ref):
    return [(f"{prefix} (record count {len(mine)} vs {len(ref)})", float("inf"), float("inf"), False)]
  for m, r in zip(mine, ref):
    tag = f"{prefix}.qid{r['qid']}"
    meta_ok = all(m.get(k) == r.get(k) for k in ("qid", "query", "vid"))
    if not meta_ok:
      rows.append(_bool_row(f"{tag}.meta", False))
    a = np.asarray(m["pred_relevant_windows"], np.float64)
    b = np.asarray(r["pred_relevant_windows"], np.float64)
    rows.append(compare_arrays(f"{tag}.pred_relevant_windows", a, b, atol=atol, rtol=0.0))
    if "pred_saliency_scores" in r:
      rows.append(compare_arrays(f"{tag}.pred_saliency_scores", m.get("pred_saliency_scores", []),
                                 r["pred_saliency_scores"], atol=atol, rtol=0.0))
  return rows


def _check_inference(fixture_dir, model, params, model_cfg, post_cfg, tiny_config, inputs
                     ) -> Tuple[List[CheckRow], Dict[int, Dict[str, np.ndarray]], List[Dict[str, Any]]]:
  infer = _load_npz(os.path.join(fixture_dir, "inference_outputs.npz"))
  rows: List[CheckRow] = []
  apply = jax.jit(lambda p, v, vm, t, tm: model.apply({"params": p}, v, vm, t, tm, None))
  mine_queries, ref_queries, per_query = [], [], {}
  for q, query in enumerate(_inference_queries(inputs, infer, tiny_config)):
    v = query["src_vid"][None]
    t = query["src_txt"][None]
    out = apply(params, v, np.ones(v.shape[:2], np.float32), t, np.ones(t.shape[:2], np.float32))
    boundary = post_lib.top_moments(np.asarray(out["decoded_unsorted"])[0], model_cfg.max_num_moment,
                                    post_cfg.emulate_torch_sort)
    saliency = np.asarray(out["saliency_scores"])[0]
    memory = np.asarray(out["memory"])[0]
    per_query[q] = dict(memory=memory, boundary=boundary)
    ref_b = infer[f"sample{q}.boundary_topk"]
    rows.append(compare_arrays(f"inference.sample{q}.boundary_topk", boundary, ref_b))
    rows.append(compare_arrays(f"inference.sample{q}.saliency", saliency, infer[f"sample{q}.saliency"]))
    rows.append(compare_arrays(f"inference.sample{q}.memory", memory, infer[f"sample{q}.memory"]))
    rows.append(compare_arrays(f"inference.sample{q}.video_msk", np.ones((1, v.shape[1])),
                               infer[f"sample{q}.video_msk"]))
    meta = dict(qid=query["qid"], query=query["query"], vid=query["vid"], duration=query["duration"])
    mine_queries.append(dict(meta, boundary=boundary, saliency=saliency))
    ref_queries.append(dict(meta, boundary=ref_b, saliency=infer[f"sample{q}.saliency"]))
  stages = ("submission_before_postprocess.jsonl", "submission.jsonl",
            f"submission_nms_thd_{post_cfg.nms_thd}.jsonl")
  from_ref = post_lib.make_submissions(ref_queries, post_cfg)
  end_to_end = post_lib.make_submissions(mine_queries, post_cfg)
  for stage, file_name in enumerate(stages):
    path = os.path.join(fixture_dir, file_name)
    if not os.path.exists(path):
      continue
    ref_records = _read_jsonl(path)
    tag = file_name.replace(".jsonl", "").replace(".", "_")
    rows += _submission_rows(f"{tag}.from_fixture_boundaries", from_ref[stage], ref_records, ATOL)
    rows += _submission_rows(f"{tag}.end_to_end", end_to_end[stage], ref_records, ROUNDING_QUANTUM + ATOL)
  return rows, per_query, end_to_end[2]


def _check_verifier(fixture_dir, verifier_cfg, tiny_config, per_query, nms_records) -> List[CheckRow]:
  path = os.path.join(fixture_dir, "pv_module.npz")
  if not os.path.exists(path):
    return []
  pv = _load_npz(path)
  rows: List[CheckRow] = []
  state = {k[len("param."):]: v for k, v in pv.items() if k.startswith("param.")}
  params = names_lib.verifier_torch_to_flax(state)
  module = verifier_lib.PostVerificationGRU(verifier_cfg)
  lengths = pv["crop_lengths"].astype(np.int32)
  offsets = pv["crop_offsets"].astype(np.int32)
  max_len = int(lengths.max())
  gather = offsets[:, None] + np.arange(max_len)[None, :]
  step_valid = np.arange(max_len)[None, :] < lengths[:, None]
  gather = np.where(step_valid, gather, 0)

  # Crop provenance: the fixture's rule (first 6 NMS-ranked windows with e − s > 0 per sample).
  samples = [int(s) for s in sorted(set(pv["crop_sample"].tolist()))]
  starts, ends, windows, scores, crops = [], [], [], [], []
  for s in samples:
    per_sample = int(np.sum(pv["crop_sample"] == s))   # crops of this sample (ragged across samples)
    picked = [w for w in nms_records[s]["pred_relevant_windows"] if w[1] - w[0] > 0][:per_sample]
    win = np.asarray(picked, np.float32)
    st = np.array([round(float(w) * verifier_cfg.clips_per_second) for w in win[:, 0]], np.int64)
    ed = np.array([round(float(w) * verifier_cfg.clips_per_second) for w in win[:, 1]], np.int64)
    starts.append(st), ends.append(ed), windows.append(win[:, :2]), scores.append(win[:, 2])
    crops += [per_query[s]["memory"][a:b] for a, b in zip(st, ed)]
  rows.append(compare_arrays("pv.crop_start_idx", np.concatenate(starts), pv["crop_start_idx"], atol=0, rtol=0))
  rows.append(compare_arrays("pv.crop_end_idx", np.concatenate(ends), pv["crop_end_idx"], atol=0, rtol=0))
  rows.append(compare_arrays("pv.crop_window_sec", np.concatenate(windows), pv["crop_window_sec"]))
  rows.append(compare_arrays("pv.crop_window_score", np.concatenate(scores), pv["crop_window_score"]))
  if sum(len(c) for c in crops) == pv["crops_concat"].shape[0]:
    rows.append(compare_arrays("pv.crops_concat(end_to_end)", np.concatenate(crops), pv["crops_concat"]))
  else:
    rows.append(("pv.crops_concat(end_to_end) (length mismatch)", float("inf"), float("inf"), False))
  # Cropping helper on the fixture memory reproduces the fixture crops.
  fixture_mem = _load_npz(os.path.join(fixture_dir, "inference_outputs.npz"))
  helper_crops = []
  for s in samples:
    sel = pv["crop_sample"] == s
    st, ed = verifier_lib.crop_indices(jnp.asarray(pv["crop_window_sec"][sel]),
                                       fixture_mem[f"sample{s}.memory"].shape[0], verifier_cfg.clips_per_second)
    c, ln = verifier_lib.crop_features(jnp.asarray(fixture_mem[f"sample{s}.memory"]), st, ed, max_len)
    helper_crops += [np.asarray(ci)[:li] for ci, li in zip(c, np.asarray(ln))]
  rows.append(compare_arrays("pv.crop_features(helper)", np.concatenate(helper_crops), pv["crops_concat"]))

  gt_by_sample = {s: _load_npz(os.path.join(fixture_dir, "inference_outputs.npz"))[f"sample{s}.relevant_windows_sec"]
                  for s in samples}
  # GT counts differ between samples: pad every crop's GT to the largest count, with a validity mask.
  max_gt = max(len(np.asarray(g).reshape(-1, 2)) for g in gt_by_sample.values())
  gt = np.zeros((len(pv["crop_sample"]), max_gt, 2), np.float32)   # [N, G, 2]
  gt_valid = np.zeros((len(pv["crop_sample"]), max_gt), bool)      # [N, G]
  for i, s in enumerate(pv["crop_sample"]):
    g = np.asarray(gt_by_sample[int(s)], np.float32).reshape(-1, 2)
    gt[i, :len(g)], gt_valid[i, :len(g)] = g, True
  iou_hat = jax.vmap(lambda w, g, v: verifier_lib.max_iou_targets(w[None], g, v)[0])(
      jnp.asarray(pv["crop_window_sec"]), jnp.asarray(gt), jnp.asarray(gt_valid))
  rows.append(compare_arrays("pv.iou_hat", iou_hat, pv["iou_hat"]))

  def loss_fn(p, concat):
    crops_padded = concat[gather] * step_valid[..., None]
    out = module.apply({"params": p}, crops_padded, jnp.asarray(lengths))
    loss = verifier_lib.pv_mse_loss(out["scores_raw"], jnp.asarray(pv["iou_hat"]), jnp.ones(len(lengths), bool))
    return loss, out

  (loss, out), (g_params, g_crops) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
      params, jnp.asarray(pv["crops_concat"]))
  rows.append(compare_arrays("pv.gru_last_hidden", out["last_hidden"], pv["gru_last_hidden"]))
  rows.append(compare_arrays("pv.scores_raw", out["scores_raw"], pv["scores_raw"]))
  rows.append(compare_arrays("pv.p_sigmoid", jax.nn.sigmoid(out["scores_raw"][:, 0]), pv["p_sigmoid"]))
  rows.append(compare_arrays("pv.loss_pv_mse", loss, pv["loss_pv_mse"]))
  g_torch = names_lib.verifier_flax_to_torch(jax.tree_util.tree_map(np.asarray, g_params))
  for name, value in g_torch.items():
    rows.append(compare_arrays(f"pv.grad.{name}", value, pv[f"grad.{name}"]))
  rows.append(compare_arrays("pv.grad.crops_concat", g_crops, pv["grad.crops_concat"]))
  return rows


# ----------------------------------------------------------------------------------------------------------------
# Entry point.


def check_flashmmr_fixture(fixture_dir: str) -> List[CheckRow]:
  """Compares the Flax port with every recorded number of a FlashMMR reference fixture folder.

  Args:
    fixture_dir: folder with tiny_config.json, params.npz, inputs.npz, outputs.npz, grads.npz, … (README).

  Returns:
    list of (group, max_abs_err, max_rel_err, ok) at tolerance 1e-5 abs OR rel (float32). Submissions built
    end to end from the port's outputs allow one 4-decimal rounding quantum (1e-4); those built from the
    fixture's own boundaries are strict.
  """
  with open(os.path.join(fixture_dir, "tiny_config.json")) as f:
    tiny_config = json.load(f)
  model_cfg, loss_cfg, post_cfg, verifier_cfg = configs_from_fixture(tiny_config)
  model = FlashMMR(model_cfg)
  rows: List[CheckRow] = []

  state = _load_npz(os.path.join(fixture_dir, "params.npz"))
  params = names_lib.flashmmr_torch_to_flax(state, model_cfg)
  back = names_lib.flashmmr_flax_to_torch(params, model_cfg)
  rows.append(_bool_row("params.roundtrip_torch_flax_torch",
                        set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)))
  params = jax.tree_util.tree_map(jnp.asarray, params)

  inputs = _load_npz(os.path.join(fixture_dir, "inputs.npz"))
  dset_name = tiny_config.get("args", {}).get("dset_name", "hl")
  variants = [("", tiny_config["BATCH"]["vids"])]
  if os.path.exists(os.path.join(fixture_dir, "samevid_outputs.npz")):
    variants.append(("samevid_", tiny_config["BATCH"].get("vids_samevid", tiny_config["BATCH"]["vids"])))
  main_grads = None
  loss_and_grad = jax.jit(jax.value_and_grad(_make_loss_fn(model, loss_cfg, inputs), has_aux=True))
  for prefix, vids in variants:
    real_neg = real_negative_mask(vids, dset_name)
    (total, (out, terms)), grads = loss_and_grad(params, jnp.asarray(real_neg))
    ref = _load_npz(os.path.join(fixture_dir, f"{prefix}outputs.npz"))
    rows += _check_training_branch(prefix, out, terms, ref, real_neg)
    ref_grads = _load_npz(os.path.join(fixture_dir, f"{prefix}grads.npz"))
    rows += _check_grads(prefix, grads, model_cfg, ref_grads)
    norm = float(optax.tree.norm(grads))
    ref_norm = float(np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in ref_grads.values())))
    rows.append(compare_arrays(f"{prefix}grads.global_norm", norm, ref_norm))
    if prefix == "":
      main_grads = grads

  after_path = os.path.join(fixture_dir, "params_after_step.npz")
  if os.path.exists(after_path) and main_grads is not None:
    args = tiny_config.get("args", {})
    step_info = {}
    losses_json = os.path.join(fixture_dir, "losses.json")
    if os.path.exists(losses_json):
      with open(losses_json) as f:
        step_info = json.load(f).get("main", {}).get("optimizer_step", {})
    tx = flashmmr_optimizer(params, model_cfg, learning_rate=float(step_info.get("lr", args.get("lr", 5e-4))),
                            weight_decay=float(step_info.get("weight_decay", args.get("wd", 1e-4))),
                            clip_max_norm=float(step_info.get("clip_max_norm", args.get("grad_clip", 0.1))),
                            b1=float(step_info.get("betas", [0.9, 0.999])[0]),
                            b2=float(step_info.get("betas", [0.9, 0.999])[1]), eps=float(step_info.get("eps", 1e-8)))
    updates, _ = tx.update(main_grads, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)
    mine = names_lib.flashmmr_flax_to_torch(jax.tree_util.tree_map(np.asarray, new_params), model_cfg)
    ref_after = _load_npz(after_path)
    for name in ref_after:
      rows.append(compare_arrays(f"params_after_step.{name}", mine[name], ref_after[name]))

  per_query: Dict[int, Dict[str, np.ndarray]] = {}
  nms_records: List[Dict[str, Any]] = []
  if os.path.exists(os.path.join(fixture_dir, "inference_outputs.npz")):
    inf_rows, per_query, nms_records = _check_inference(fixture_dir, model, params, model_cfg, post_cfg,
                                                        tiny_config, inputs)
    rows += inf_rows
  if per_query:
    rows += _check_verifier(fixture_dir, verifier_cfg, tiny_config, per_query, nms_records)
  return rows


def row_group(name: str) -> str:
  """Report group of a row: its first dotted component (two for submissions: stage and source)."""
  parts = name.split(".")
  return ".".join(parts[:2]) if parts[0].startswith("submission") else parts[0]


def summarize(rows: Sequence[CheckRow]) -> str:
  """Per-group maxima plus one line per failing row (for reports)."""
  lines = []
  groups: Dict[str, List[CheckRow]] = {}
  for row in rows:
    groups.setdefault(row_group(row[0]), []).append(row)
  for key, members in groups.items():
    max_abs = max(r[1] for r in members)
    max_rel = max(r[2] for r in members)
    ok = all(r[3] for r in members)
    lines.append(f"{key:45s} n={len(members):4d} max_abs={max_abs:.3e} max_rel={max_rel:.3e} ok={ok}")
  for row in rows:
    if not row[3]:
      lines.append(f"FAIL {row[0]} abs={row[1]:.3e} rel={row[2]:.3e}")
  return "\n".join(lines)


if __name__ == "__main__":
  import sys
  result = check_flashmmr_fixture(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/flashmmr_reference")
  print(summarize(result))


def run_check(fixture_dir: str) -> tuple[list, bool]:
  """(one line per group, all ok) for launch/check_reference.py."""
  rows = check_flashmmr_fixture(fixture_dir)
  groups: dict = {}
  for row in rows:
    name = row[0]
    group = name.split('.')[0] if '.' in name else name.split(' ')[0]
    groups.setdefault(group, []).append(row)
  lines = []
  for group, grp in groups.items():
    bad = [r[0] for r in grp if not r[3]]
    lines.append(f"{'OK  ' if not bad else 'FAIL'} {group:<34} n={len(grp):<4} max_abs={max(r[1] for r in grp):.3e} "
                 f"max_rel={max(r[2] for r in grp):.3e}" + (f' failing={bad[:5]}' if bad else ''))
  return lines, all(r[3] for r in rows)
