"""An easy→hard curriculum over Splice-augmented samples for AMR's stage 1 (cold start).

The paper's abstract says the cold start uses curriculum learning; the released code has none (its DataLoader
shuffles uniformly), so `pacing='uniform'` (the default) reproduces the code and the other pacings are ours.

Difficulty of one augmented sample, from its `SpliceInfo` alone (each term in [0, 1]):
  compression  = 1 - mean(m / n) over the spliced true segments      (down-sampled moments are harder)
  distractors  = k / (k + 1), k = wrong spans spliced as distractors   (more Boost distractors are harder)
  nearness     = 1 / g, g = min gap in clips between a true segment and a distractor (g >= 1), 0 without one
                                                                       (a distractor next to the moment is harder)
  smallness    = 1 - (true clips / grid clips)                         (short moments are harder)
  difficulty   = sum_i w_i * term_i / sum_i w_i, default w = compression 0.35, distractors 0.25,
                 nearness 0.2, smallness 0.2; so difficulty lies in [0, 1].

Schedule (competence-based, after Platanios et al., NAACL 2019): by default the difficulties are first replaced
by their empirical CDF r in (0, 1] (`by_rank=True`), so competence c means "the easiest fraction c of the data".
Competence rises from `start_frac` to 1 over the first `warm_frac` of training ('linear', 'sqrt', or 'step' in
`num_stages` equal stages), then stays 1. A sample gets weight 1 when r <= c and exp(-(r - c) / temperature)
otherwise (temperature 0: weight 0); weights are normalised to sum 1. At competence 1 every weight is 1, so
the end of the curriculum is exactly uniform sampling.

`augmentation_phase` gives the other (generation-side) curriculum suggested in `amr.md`: true moments only
without compression, then with compression, then with Boost distractors, in equal phases.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from amr_jax.projects.amr.augment import SpliceInfo

PACINGS = ("uniform", "linear", "sqrt", "step")

DEFAULT_DIFFICULTY_WEIGHTS = {"compression": 0.35, "distractors": 0.25, "nearness": 0.2, "smallness": 0.2}

DEFAULT_CURRICULUM = {
    "pacing": "uniform",  # the reference: no curriculum
    "start_frac": 0.2,  # competence at step 0: the easiest 20% of samples get full weight
    "warm_frac": 0.5,  # competence reaches 1 after half of the steps
    "temperature": 0.05,  # soft decay beyond the competence, in units of r
    "num_stages": 3,  # 'step' pacing only
    "by_rank": True,  # use the empirical CDF of the difficulties
}


def difficulty_terms(info: SpliceInfo) -> dict[str, float]:
  """The four difficulty terms of one augmented sample, each in [0, 1] (see the module docstring)."""
  min_gap = info.min_gap_clips
  return {
      "compression": 1.0 - info.compression_ratio,
      "distractors": info.num_distractors / (info.num_distractors + 1.0),
      "nearness": 0.0 if min_gap is None else 1.0 / max(min_gap, 1),
      "smallness": 1.0 - min(max(info.true_coverage, 0.0), 1.0),
  }


def difficulty_from_info(info: SpliceInfo, weights: Optional[Mapping[str, float]] = None) -> float:
  """Difficulty in [0, 1] of one augmented sample: the weighted mean of `difficulty_terms`.

  Args:
    info: the sample's `SpliceInfo` (from `amr_jax.projects.amr.augment`).
    weights: term name -> non-negative weight; missing terms weigh 0. Default `DEFAULT_DIFFICULTY_WEIGHTS`.
  """
  weights = DEFAULT_DIFFICULTY_WEIGHTS if weights is None else weights
  unknown = set(weights) - set(DEFAULT_DIFFICULTY_WEIGHTS)
  if unknown:
    raise ValueError(f"difficulty weights: unknown terms {sorted(unknown)}; known "
                     f"{sorted(DEFAULT_DIFFICULTY_WEIGHTS)}")
  total = float(sum(weights.values()))
  if total <= 0 or any(w < 0 for w in weights.values()):
    raise ValueError(f"difficulty weights must be non-negative with a positive sum, got {dict(weights)}")
  terms = difficulty_terms(info)
  return sum(w * terms[name] for name, w in weights.items()) / total


def difficulties_from_infos(infos: Any, weights: Optional[Mapping[str, float]] = None) -> np.ndarray:
  """`difficulty_from_info` over a sequence of infos -> [N] float64."""
  return np.array([difficulty_from_info(info, weights) for info in infos], dtype=np.float64)


def _cfg_value(cfg: Optional[Mapping[str, Any]], key: str) -> Any:
  if cfg is not None and key in cfg:
    return cfg[key]
  return DEFAULT_CURRICULUM[key]


def competence(step: int, total_steps: int, cfg: Optional[Mapping[str, Any]] = None) -> float:
  """Competence c(step) in [start_frac, 1]; 1 for 'uniform' and from step `warm_frac * total_steps` on.

  Args:
    step: the current optimiser step (0-based).
    total_steps: steps of the whole (stage-1) run, > 0.
    cfg: a mapping with the keys of `DEFAULT_CURRICULUM` (missing keys take the defaults); a dict or an
      `ml_collections.ConfigDict`.
  """
  pacing = _cfg_value(cfg, "pacing")
  if pacing not in PACINGS:
    raise ValueError(f"curriculum pacing {pacing!r} unknown; known {PACINGS}")
  if total_steps <= 0:
    raise ValueError(f"curriculum: total_steps must be > 0, got {total_steps}")
  if pacing == "uniform":
    return 1.0
  start_frac = float(_cfg_value(cfg, "start_frac"))
  warm_frac = float(_cfg_value(cfg, "warm_frac"))
  if not 0.0 <= start_frac <= 1.0 or not 0.0 < warm_frac <= 1.0:
    raise ValueError(f"curriculum: need 0 <= start_frac <= 1 and 0 < warm_frac <= 1, got start_frac={start_frac}, "
                     f"warm_frac={warm_frac}")
  progress = min(max(step / (warm_frac * total_steps), 0.0), 1.0)
  if pacing == "linear":
    return start_frac + (1.0 - start_frac) * progress
  if pacing == "sqrt":
    return float(np.sqrt(start_frac**2 + (1.0 - start_frac**2) * progress))
  num_stages = int(_cfg_value(cfg, "num_stages"))
  if num_stages < 2:
    raise ValueError(f"curriculum: 'step' pacing needs num_stages >= 2, got {num_stages}")
  stage = min(int(progress * num_stages), num_stages - 1)
  return start_frac + (1.0 - start_frac) * stage / (num_stages - 1)


def difficulty_ranks(difficulty: np.ndarray) -> np.ndarray:
  """Empirical CDF of each difficulty, in (0, 1]; ties share the value (the fraction <= it)."""
  difficulty = np.asarray(difficulty, dtype=np.float64)
  return np.searchsorted(np.sort(difficulty), difficulty, side="right") / difficulty.size


def sampling_weights(difficulty: np.ndarray, step: int, total_steps: int,
                     cfg: Optional[Mapping[str, Any]] = None) -> np.ndarray:
  """Normalised sampling weights of N samples at `step` (pure: depends on its arguments only).

  Args:
    difficulty: [N] difficulties in [0, 1] (e.g. `difficulties_from_infos`); not modified.
    step: the current optimiser step.
    total_steps: steps of the whole run.
    cfg: the schedule, keys of `DEFAULT_CURRICULUM`.

  Returns:
    [N] float64 weights summing to 1; all equal for 'uniform' pacing and once the competence is 1.
  """
  difficulty = np.asarray(difficulty, dtype=np.float64)
  if difficulty.ndim != 1 or difficulty.size == 0:
    raise ValueError(f"sampling_weights: difficulty must have shape [N], N >= 1; got {difficulty.shape}")
  if not np.all(np.isfinite(difficulty)):
    raise ValueError("sampling_weights: difficulty has non-finite values")
  level = competence(step, total_steps, cfg)
  if level >= 1.0:
    return np.full(difficulty.shape, 1.0 / difficulty.size)
  ranks = difficulty_ranks(difficulty) if _cfg_value(cfg, "by_rank") else np.clip(difficulty, 0.0, 1.0)
  level = max(level, float(ranks.min()))  # the easiest samples are always allowed
  temperature = float(_cfg_value(cfg, "temperature"))
  if temperature < 0:
    raise ValueError(f"curriculum: temperature must be >= 0, got {temperature}")
  excess = np.maximum(ranks - level, 0.0)  # [N] how far beyond the competence
  if temperature == 0:
    weights = (excess == 0).astype(np.float64)
  else:
    weights = np.exp(-excess / temperature)
  return weights / weights.sum()


def sample_indices(weights: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                   replace: bool = False) -> np.ndarray:
  """Draws `batch_size` sample indices with probabilities `weights`.

  Without replacement unless `replace` or fewer than `batch_size` samples have a positive weight.

  Args:
    weights: [N] non-negative weights (normalised here).
    batch_size: indices to draw.
    rng: the generator (the caller derives it from the seed and step for reproducibility).
    replace: draw with replacement.

  Returns:
    [batch_size] int64 indices.
  """
  weights = np.asarray(weights, dtype=np.float64)
  if weights.ndim != 1 or weights.size == 0 or np.any(weights < 0) or weights.sum() <= 0:
    raise ValueError("sample_indices: weights must be [N] non-negative with a positive sum")
  probabilities = weights / weights.sum()
  replace = replace or np.count_nonzero(probabilities) < batch_size
  return rng.choice(weights.size, size=batch_size, replace=replace, p=probabilities).astype(np.int64)


def augmentation_phase(step: int, total_steps: int, num_phases: int = 3) -> dict[str, bool]:
  """Splice options of the phased (generation-side) curriculum at `step`.

  Phase 0: true moments only, no compression; phase 1: with random compression; phase 2 and later: with
  compression and Boost distractors. The run is cut into `num_phases` equal parts (the last phase lasts
  through the end); pass the result as keyword arguments to `amr_jax.projects.amr.augment.splice`/`iter_augmented`.
  """
  if total_steps <= 0 or num_phases < 1:
    raise ValueError(f"augmentation_phase: need total_steps > 0 and num_phases >= 1, got {total_steps}, "
                     f"{num_phases}")
  phase = min(max(int(step * num_phases / total_steps), 0), num_phases - 1)
  if num_phases < 3:  # compress into the available phases: the last one is the full augmentation
    phase = 2 if phase == num_phases - 1 else 1
  return {"compress": phase >= 1, "use_wrong_spans": phase >= 2}
