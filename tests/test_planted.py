"""Tests of the planted feature store: determinism, query dependence on real QVH rows, shapes, layouts, CLI.

Query dependence is checked with the generator's own projections: decode clips and the EOT token back to codes.
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from amr_jax.data import annotations, planted
from amr_jax.data.features import FeatureStore, l2_normalize
from amr_jax.data.records import MomentRecord

REPO = pathlib.Path(__file__).resolve().parents[1]
VAL = REPO / "data" / "annotations" / "qvhighlights" / "highlight_val_release.jsonl"


def _digests(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def val_records():
  return annotations.load_annotations(VAL)[:100]


@pytest.fixture(scope="module")
def tiny_store(val_records, tmp_path_factory):
  root = tmp_path_factory.mktemp("planted_tiny")
  planted.write_planted_store(val_records, str(root), seed=7, dims="tiny")
  return root


def test_same_seed_same_bytes(val_records, tiny_store, tmp_path):
  planted.write_planted_store(val_records[:30], str(tmp_path / "a"), seed=7)
  planted.write_planted_store(val_records[:30], str(tmp_path / "b"), seed=7)
  planted.write_planted_store(val_records[:30], str(tmp_path / "c"), seed=8)
  a, b, c = (_digests(tmp_path / x) for x in "abc")
  assert a == b
  assert len(a) == 1 + 2 * len({r.vid for r in val_records[:30]}) + 30
  text_files = [k for k in a if k.startswith("clip_b32_txt_k4")]
  assert all(a[k] != c[k] for k in text_files)
  # Text files are keyed by qid alone, so they match the bigger store written with the same seed.
  full = _digests(tiny_store)
  assert all(full[k] == a[k] for k in text_files)


def test_tiny_layout_and_shapes(val_records, tiny_store):
  store = FeatureStore(str(tiny_store))
  assert store.layout.name == "qvh"
  record = val_records[0]
  with np.load(tiny_store / "slowfast_features" / f"{record.vid}.npz") as npz:
    assert npz["features"].shape == (75, 16) and npz["features"].dtype == np.float32
  assert np.load(tiny_store / "clip_b32_vid_k4" / f"{record.vid}.npy").shape == (75, 4, 8)
  words = planted.query_words(record.query)
  assert np.load(tiny_store / "clip_b32_txt_k4" / f"{record.qid}.npy").shape == (len(words) + 2, 4, 8)
  assert (store.video_dim, store.text_dim) == (48, 32)
  meta = json.loads((tiny_store / "planted.json").read_text())
  assert (meta["seed"], meta["dims"], meta["layout"]) == (7, "tiny", "qvh")


def test_query_is_needed(val_records, tiny_store):
  store = FeatureStore(str(tiny_store))
  model = planted.PlantedModel.from_store(str(tiny_store))
  hit, chance = planted.code_retrieval_hit_rate(store, val_records, model)
  assert 0.15 < chance < 0.45
  assert hit >= 0.9, (hit, chance)
  shuffled = [planted.code_retrieval_hit_rate(store, val_records, model, shuffle_seed=s)[0] for s in range(3)]
  assert np.mean(shuffled) < chance + 0.12, (shuffled, chance)
  # Query-blind: the clip with the most planted energy is as often a distractor as the true moment.
  blind = 0
  for record in val_records:
    codes = model.decode_video(store.video(record.vid))
    energy = np.linalg.norm(codes - codes.mean(0), axis=1)
    best = int(np.argmax(energy))
    blind += any(planted.window_clips(w, len(codes))[0] <= best < planted.window_clips(w, len(codes))[1]
                 for w in record.windows)
  assert blind / len(val_records) < 0.6, blind


def test_distractors_avoid_true_windows(val_records):
  pool = sorted({r.query for r in val_records})
  for record in val_records[:20]:
    plants = planted.plan_video(record.vid, [record], 75, pool, seed=0)
    truth = [p for p in plants if not p.distractor]
    fakes = [p for p in plants if p.distractor]
    assert len(truth) == len(record.windows)
    covered = np.zeros(75, int)
    for p in plants:
      covered[p.first_clip:p.first_clip + len(p.strengths)] += 1
    assert covered.max() == 1                                   # nothing overlaps
    assert all(p.query != record.query for p in fakes)
    true_clips = sum(len(p.strengths) for p in truth)
    if true_clips * (1 + planted.NUM_DISTRACTORS) <= 75 // 2:   # plenty of room: full-length copies of each
      assert sorted(len(p.strengths) for p in fakes) == sorted(
          len(p.strengths) for p in truth for _ in range(planted.NUM_DISTRACTORS))
      for t in truth:       # same strength profile as the window they copy
        assert sum(np.array_equal(f.strengths, t.strengths) for f in fakes) >= planted.NUM_DISTRACTORS


def test_real_dims_shapes(val_records, tmp_path):
  records = val_records[:2] + [MomentRecord(qid=99999, vid="charadesX", query=" ".join(["word"] * 40),
                                            duration=None, windows=((3.5, 17.2),))]
  planted.write_planted_store(records, str(tmp_path), seed=0, dims="real")
  store = FeatureStore(str(tmp_path))
  assert (store.video_dim, store.text_dim) == (2304 + 4 * 768, 4 * 512)
  vid = records[0].vid
  with np.load(tmp_path / "slowfast_features" / f"{vid}.npz") as npz:
    assert npz["features"].shape == (75, 2304)
  assert np.load(tmp_path / "clip_b32_vid_k4" / f"{vid}.npy").shape == (75, 4, 768)
  assert store.text(records[1].qid).shape == (len(planted.query_words(records[1].query)) + 2, 2048)
  assert np.load(tmp_path / "clip_b32_txt_k4" / "99999.npy").shape == (32, 4, 512)    # capped at 32 tokens
  assert store.video("charadesX").shape == (9, 5376)                                 # ceil(17.2 / 2) clips


def test_lighthouse_layout_is_readable(val_records, tmp_path):
  planted.write_planted_store(val_records[:5], str(tmp_path), seed=0, layout="lighthouse")
  store = FeatureStore(str(tmp_path))
  assert store.layout.name == "lighthouse"
  assert (store.video_dim, store.text_dim) == (16 + 32, 32)
  record = val_records[0]
  assert os.path.isfile(tmp_path / "clip_text_features" / f"qid{record.qid}.npz")
  assert store.video(record.vid).shape == (75, 48)
  model = planted.PlantedModel.from_store(str(tmp_path))
  codes = l2_normalize(model.decode_video(store.video(record.vid)))
  assert codes.shape == (75, 16)


def test_cli_and_bad_input(tmp_path):
  subset = tmp_path / "sub.jsonl"
  annotations.write_jsonl(annotations.load_annotations(VAL)[:4], subset)
  out = tmp_path / "store"
  cmd = [sys.executable, str(REPO / "launch" / "make_planted_features.py"), f"--annotations={subset}",
         f"--out={out}", "--seed=3"]
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "wrote 4 videos and 4 queries" in done.stdout
  assert FeatureStore(str(out)).video_dim == 48
  bad = subprocess.run(cmd[:2] + [f"--annotations={tmp_path / 'missing.jsonl'}", f"--out={out}"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert bad.returncode != 0
  assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
  assert "missing.jsonl" in bad.stderr
