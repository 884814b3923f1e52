"""Tests of pre-flight validation: one pass over a planted store with injected faults names every fault.

Also checks `drop_bad` and the `launch/validate_data.py` exit codes (0 clean, 1 with problems, 0 with --drop_bad).
"""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from amr_jax.data import annotations, planted, validate
from amr_jax.data.features import FeatureStore

REPO = pathlib.Path(__file__).resolve().parents[1]
VAL = REPO / "data" / "annotations" / "qvhighlights" / "highlight_val_release.jsonl"
SCRIPT = str(REPO / "launch" / "validate_data.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture()
def faulty(tmp_path):
  """A clean planted store for 20 val rows, then one fault of each kind, each on its own record."""
  records = annotations.load_annotations(VAL)[:40]
  by_vid = {}
  for r in records:
    by_vid.setdefault(r.vid, r)
  records = list(by_vid.values())[:20]           # one query per video, so each fault hits one record
  clean = tmp_path / "clean.jsonl"
  annotations.write_jsonl(records, clean)
  records = annotations.load_annotations(clean)
  store_dir = tmp_path / "store"
  planted.write_planted_store(records, str(store_dir), seed=1)
  faults = {}
  # 1. a missing video file
  faults["missing"] = records[0]
  (store_dir / "clip_b32_vid_k4" / f"{records[0].vid}.npy").unlink()
  # 2. a NaN in SlowFast
  faults["nan"] = records[1]
  path = store_dir / "slowfast_features" / f"{records[1].vid}.npz"
  with np.load(path) as npz:
    x = npz["features"].copy()
  x[3, 2] = np.nan
  np.savez(path, features=x)
  # 3. a truncated video: its windows end past the features
  faults["truncated"] = next(r for r in records[2:] if max(e for _, e in r.windows) > 20)
  vid = faults["truncated"].vid
  np.save(store_dir / "clip_b32_vid_k4" / f"{vid}.npy", np.load(store_dir / "clip_b32_vid_k4" / f"{vid}.npy")[:10])
  # 4. a text file with the wrong width
  faults["width"] = records[3] if records[3] is not faults["truncated"] else records[4]
  np.save(store_dir / "clip_b32_txt_k4" / f"{faults['width'].qid}.npy", np.ones((5, 4, 7), np.float32))
  # Annotation faults, on the remaining records.
  rest = [r for r in records if all(r is not f for f in faults.values())]
  faults["past_end"] = rest[0]
  rest[0] = rest[0].replace(windows=rest[0].windows[:-1] + ((rest[0].windows[-1][0], rest[0].duration + 10),))
  faults["empty_query"] = rest[1]
  rest[1] = rest[1].replace(query="  ")
  w = rest[2].windows[0]
  free = 0.0 if w[0] >= 10 else 140.0
  faults["off_grid"] = rest[2]
  rest[2] = rest[2].replace(wrong_spans=((free + 1.0, free + 5.0),))
  faults["duplicate"] = rest[3]
  bad_rows = [r for r in records if all(r is not f for f in faults.values())] + rest[:3] + [rest[3]] + [
      faults["missing"], faults["nan"], faults["truncated"], faults["width"]]
  bad_rows.append(rest[3].replace(query="a second row with the same qid"))
  faulty_path = tmp_path / "faulty.jsonl"
  annotations.write_jsonl(bad_rows, faulty_path)
  return {"clean": clean, "faulty": faulty_path, "store": store_dir, "faults": faults}


def test_one_pass_names_every_fault(faulty):
  records = annotations.load_annotations(faulty["faulty"])
  store = FeatureStore(str(faulty["store"]))
  problems = validate.validate(records, store)
  lines = [str(p) for p in problems]
  faults = faulty["faults"]

  def find(text, qid=None, vid=None):
    hits = [l for l in lines if text in l and (qid is None or f"qid={qid}" in l) and (vid is None or
                                                                                       f"vid={vid}" in l)]
    assert hits, (text, qid, vid, lines)
    return hits

  find("missing file", vid=faults["missing"].vid)
  find("clip_b32_vid_k4", vid=faults["missing"].vid)
  find("NaN/Inf", vid=faults["nan"].vid)
  hits = find("ends past the video features", qid=faults["truncated"].qid)
  assert "10 clips = 20s" in hits[0] and str(faulty["faulty"]) in hits[0]
  find("differs from the store's (4, 8)", qid=faults["width"].qid)
  find("past the duration", qid=faults["past_end"].qid)
  find("field=query: empty query", qid=faults["empty_query"].qid)
  find("off the 2 s grid", qid=faults["off_grid"].qid)
  find("field=qid: duplicate qid", qid=faults["duplicate"].qid)
  assert all(l.count("field=") == 1 for l in lines)
  # Nothing else is reported: every problem concerns one of the faulty records (some faults give several lines,
  # e.g. the truncated video flags each window and the relevant clip ids).
  fault_vids = {f.vid for f in faults.values()}
  assert all(p.vid in fault_vids for p in problems), "\n".join(lines)
  assert len(problems) == 11, "\n".join(lines)

  kept, dropped = validate.drop_bad(records, problems)
  assert len(kept) + len(dropped) == len(records)
  dropped_qids = sorted(r.qid for r in dropped)
  assert dropped_qids == sorted([f.qid for f in faults.values()])       # the duplicate's later row only
  assert sum(r.qid == faults["duplicate"].qid for r in kept) == 1


def test_cli_exit_codes(faulty, tmp_path):
  clean = _run(f"--annotations={faulty['clean']}", f"--features={faulty['store']}", "--max_v_l=75")
  # The clean annotations still meet the injected feature faults.
  assert clean.returncode == 1 and "missing file" in clean.stdout
  fresh = tmp_path / "fresh"
  planted.write_planted_store(annotations.load_annotations(faulty["clean"]), str(fresh), seed=1)
  ok = _run(f"--annotations={faulty['clean']}", f"--features={fresh}", "--grid_sec=2")
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert "no problems in 20 records" in ok.stdout

  bad = _run(f"--annotations={faulty['faulty']}", f"--features={faulty['store']}")
  assert bad.returncode == 1
  assert len([l for l in bad.stdout.splitlines() if "field=" in l]) == 11
  assert "11 problem(s)" in bad.stdout

  out = tmp_path / "kept.jsonl"
  dropped = _run(f"--annotations={faulty['faulty']}", f"--features={faulty['store']}", "--drop_bad", f"--out={out}")
  assert dropped.returncode == 0, dropped.stderr
  assert len(annotations.load_annotations(out)) == 21 - 8
  assert "dropped 8: qids" in dropped.stdout
  again = _run(f"--annotations={out}", f"--features={faulty['store']}")
  assert again.returncode == 0, again.stdout


@pytest.mark.parametrize("args, reason", [
    (["--features=/nonexistent_store"], "--annotations is required"),
    (["--annotations=/nonexistent.jsonl", "--features=/tmp"], "nonexistent.jsonl"),
    (["--drop_bad"], "--annotations is required"),
])
def test_cli_bad_input_one_line(args, reason):
  done = _run(*args)
  assert done.returncode == 1
  assert "Traceback" not in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and reason in done.stderr


def test_bad_store_dir_is_one_line(faulty, tmp_path):
  done = _run(f"--annotations={faulty['clean']}", f"--features={tmp_path}")
  assert done.returncode == 1 and "no known feature layout" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_annotation_only_checks():
  r = annotations.load_annotations(VAL)[0]
  records = [r.replace(windows=((-2.0, 4.0), (10.0, 10.0)), relevant_clip_ids=(0, 1, 70),
                       saliency_scores=((1, 2, 3),), wrong_spans=((2.0, 6.0),))]
  lines = [str(p) for p in validate.validate(records, None)]
  text = "\n".join(lines)
  assert "relevant_windows[0]: negative start" in text
  assert "relevant_windows[1]: start 10 >= end 10" in text
  assert "clip id(s) outside every window" in text
  assert "1 score rows for 3 clip ids" in text
  assert "wrong_spans[0]: [2, 6] overlaps GT window 0" in text


def test_cli_config_sets_max_v_l(faulty, tmp_path):
  fresh = tmp_path / "fresh"
  planted.write_planted_store(annotations.load_annotations(faulty["clean"]), str(fresh), seed=1)
  config = tmp_path / "short_config.py"
  config.write_text("import ml_collections\n\n\ndef get_config(arg=''):\n"
                    "  c = ml_collections.ConfigDict()\n  c.data = ml_collections.ConfigDict()\n"
                    "  c.data.max_v_l = 10 if arg == 'short' else 75\n  c.data.clip_len = 2.0\n  return c\n")
  assert _run(f"--annotations={faulty['clean']}", f"--features={fresh}", f"--config={config}").returncode == 0
  short = _run(f"--annotations={faulty['clean']}", f"--features={fresh}", f"--config={config}:short")
  assert short.returncode == 1 and "10 clips = 20s" in short.stdout
  broken = _run(f"--annotations={faulty['clean']}", f"--features={fresh}", f"--config={tmp_path / 'none.py'}")
  assert broken.returncode == 1 and len(broken.stderr.strip().splitlines()) == 1
