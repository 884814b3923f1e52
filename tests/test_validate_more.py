"""More data checks: empty files, every unparsable row at once (droppable), widths from validated files only,
store/model width mismatches named, and predicting without labels.

Rows come from the repo's QVHighlights val file; the feature store is planted (tiny widths) per test.
"""
import json
import os
import pathlib

import numpy as np
import pytest

from amr_jax.data import annotations, planted, validate
from amr_jax.data.features import FeatureStore

REPO = pathlib.Path(__file__).resolve().parents[1]
VAL = REPO / "data" / "annotations" / "qvhighlights" / "highlight_val_release.jsonl"


@pytest.fixture()
def small(tmp_path):
  """Six val rows (one per video) in a jsonl file and a clean planted store for them."""
  by_vid = {}
  for r in annotations.load_annotations(VAL)[:30]:
    by_vid.setdefault(r.vid, r)
  records = list(by_vid.values())[:6]
  path = tmp_path / "six.jsonl"
  annotations.write_jsonl(records, path)
  store_dir = tmp_path / "store"
  planted.write_planted_store(annotations.load_annotations(path), str(store_dir), seed=3)
  return {"path": path, "store": store_dir, "records": annotations.load_annotations(path), "tmp": tmp_path}


def test_empty_annotation_file_is_a_problem(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n  \n")
  records, problems = validate.load_checked(str(empty))
  assert records == []
  assert [str(p) for p in problems] == [f"{empty}: field=file: empty annotation file: no records"]
  # validate() alone also refuses an empty input (callers that loaded the records themselves).
  problems = validate.validate([], None)
  assert len(problems) == 1 and "no annotation records" in str(problems[0])
  assert validate.drop_bad([], problems) == ([], [])
  assert validate.summarize([], problems).startswith("1 problem(s) in 0 records")


def test_missing_and_directory_files_are_problems(tmp_path):
  _, problems = validate.load_checked(f"{tmp_path / 'nope.jsonl'},{tmp_path}")
  assert [p.message for p in problems] == ["missing file", "is a directory, not an annotation file"]
  _, problems = validate.load_checked("")
  assert [p.message for p in problems] == ["no annotation file given"]


def test_every_unparsable_row_is_reported_together_with_other_faults(small):
  rows = small["path"].read_text().splitlines()
  rows.insert(1, "this is not json")
  rows.insert(3, '{"qid": 5, "vid": ')
  rows.insert(5, '[1, 2, 3]')
  good = json.loads(rows[0])
  good["relevant_windows"] = [[0, "x"]]                    # a type error in a parsable row
  rows.append(json.dumps(dict(good, qid=10**6)))
  empty_query = json.loads(rows[2])
  rows[2] = json.dumps(dict(empty_query, query=" "))      # and a validation fault
  faulty = small["tmp"] / "faulty.jsonl"
  faulty.write_text("\n".join(rows) + "\n")
  records, problems = validate.load_checked(str(faulty))
  problems += validate.validate(records, FeatureStore(str(small["store"])))
  lines = [str(p) for p in problems]
  assert f"{faulty}:2: field=row: invalid JSON" in lines[0]
  assert any(l.startswith(f"{faulty}:4: ") and "invalid JSON" in l for l in lines)
  assert any(l.startswith(f"{faulty}:6: ") and "expected a JSON object, got list" in l for l in lines)
  assert any(l.startswith(f"{faulty}:10: qid=1000000 field=relevant_windows[0]") for l in lines)
  assert any("field=query: empty query" in l for l in lines)
  assert len(problems) == 5, "\n".join(lines)
  # --drop_bad: the unparsable rows are simply not loaded; the other bad row is dropped.
  kept, dropped = validate.drop_bad(records, problems)
  assert len(kept) == 5 and len(dropped) == 1
  assert validate.unparsed_rows(records, problems) == [(str(faulty), 2), (str(faulty), 4), (str(faulty), 6),
                                                       (str(faulty), 10)]
  assert "4 unparsable row(s) not loaded" in validate.summarize(records, problems)
  # The strict loader still stops at the first bad row (callers that want an exception).
  with pytest.raises(annotations.AnnotationError, match=":2: "):
    annotations.load_annotations(faulty)


def test_charades_txt_rows_are_collected_too(tmp_path):
  txt = tmp_path / "c.txt"
  txt.write_text("AO8RW 0.0 6.9##fine\nAO8RW 0.0 x##bad number\nno separator here\nAO8RW 1 2##ok\n")
  records, problems = validate.load_checked(str(txt))
  assert [r.line for r in records] == [1, 4]
  assert [(p.line, p.field) for p in problems] == [(2, "relevant_windows"), (3, "row")]
  records, problems = validate.load_checked(str(txt), with_labels=False)   # start/end not needed to predict
  assert [r.line for r in records] == [1, 2, 4] and [p.line for p in problems] == [3]


def _first_listed(directory: pathlib.Path, suffix: str) -> pathlib.Path:
  with os.scandir(directory) as entries:
    return pathlib.Path(next(e.path for e in entries if e.name.endswith(suffix)))


def test_store_widths_come_from_files_that_passed_validation(small):
  store_dir = small["store"]
  clip_dir = store_dir / "clip_b32_vid_k4"
  first = _first_listed(clip_dir, ".npy")            # the file an unvalidated store reads its width from
  good = np.load(first)
  np.save(first, np.ones((good.shape[0], good.shape[1], good.shape[2] + 1), np.float32))
  naive = FeatureStore(str(store_dir))
  wrong_dim = naive.video_dim
  store = FeatureStore(str(store_dir))
  problems = validate.validate(small["records"], store)
  assert [p.vid for p in problems] == [first.stem] and "differs from the store's" in str(problems[0])
  kept, dropped = validate.drop_bad(small["records"], problems)
  assert [r.vid for r in dropped] == [first.stem] and len(kept) == 5
  right_dim = wrong_dim - good.shape[1]               # one fewer value per layer
  assert store.video_dim == right_dim and naive.video_dim == wrong_dim
  # A later validation (the val split) is checked against the pinned widths.
  assert validate.validate(kept, store) == []


def test_check_widths_names_store_expected_and_found(small):
  store = FeatureStore(str(small["store"]))
  dims = {"video_dim": store.video_dim, "text_dim": store.text_dim}
  assert validate.check_widths(store, dims) == []
  problems = validate.check_widths(store, {"video_dim": 5376, "text_dim": dims["text_dim"]},
                                   expected_by="the export in runs/x")
  (problem,) = problems
  text = str(problem)
  assert text.startswith(f"{store.root}: field=video_dim: ")
  assert f"the store's video features are {dims['video_dim']} wide (slowfast " in text
  assert "the export in runs/x expects 5376" in text and "\n" not in text
  assert problem.scope == validate.SCOPE_STORE
  (text_problem,) = validate.check_widths(store, {"text_dim": 2048})
  assert "text features are" in str(text_problem) and "expects 2048" in str(text_problem)


def test_predicting_needs_no_labels(small):
  store_dir = small["store"]
  records = small["records"]
  # A video cut short: its GT windows lie past the kept clips (a 300 s video predicted with max_v_l clips).
  long = max(records, key=lambda r: max(e for _, e in r.windows))
  clip_path = store_dir / "clip_b32_vid_k4" / f"{long.vid}.npy"
  np.save(clip_path, np.load(clip_path)[:5])
  rows = small["path"].read_text().splitlines()
  unlabelled = json.loads(rows[1])
  for key in ("relevant_windows", "relevant_clip_ids", "saliency_scores"):
    unlabelled.pop(key, None)
  rows[1] = json.dumps(unlabelled)
  broken_labels = json.loads(rows[2])
  broken_labels["relevant_windows"] = "not a list"       # malformed labels do not matter when predicting
  rows[2] = json.dumps(broken_labels)
  path = small["tmp"] / "predict.jsonl"
  path.write_text("\n".join(rows) + "\n")

  labelled, parse_problems = validate.load_checked(str(path))
  assert [p.line for p in parse_problems] == [3]
  problems = [str(p) for p in validate.validate(labelled, FeatureStore(str(store_dir)))]
  assert any("relevant_windows: no GT windows" in p for p in problems)
  assert any("ends past the video features" in p for p in problems)

  records, parse_problems = validate.load_checked(str(path), with_labels=False)
  assert parse_problems == [] and len(records) == 6 and all(not r.windows for r in records)
  assert validate.validate(records, FeatureStore(str(store_dir)), with_labels=False) == []
  # with_labels=False keeps every other check: an empty query is still a problem.
  blank = [records[0].replace(query="")] + records[1:]
  assert [p.field for p in validate.validate(blank, None, with_labels=False)] == ["query"]
  assert all(not r.windows for r in annotations.load_many(str(path), with_labels=False))
