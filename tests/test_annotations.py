"""Tests of the annotation loaders: row counts of every shipped file, formats, round trips and error messages.

The files are the repo copies under data/annotations/ (see data/annotations/SOURCES.md).
"""
import json
import pathlib

import pytest

from amr_jax.data import annotations
from amr_jax.data.records import MomentRecord

ROOT = pathlib.Path(__file__).resolve().parents[1] / "data" / "annotations"
QVH = ROOT / "qvhighlights"
QVM2 = ROOT / "qv-m2"
CHARADES = ROOT / "charades-sta"


def _strip(records):
  """Records without their file/line provenance (which differs after a round trip)."""
  return [r.replace(source="", line=0) for r in records]


@pytest.mark.parametrize("path, count", [
    (QVH / "highlight_train_release.jsonl", 7218),
    (QVH / "highlight_val_release.jsonl", 1550),
    (QVH / "highlight_test_release.jsonl", 1542),
    (QVH / "highlight_test_with_gt.jsonl", 1542),
    (QVM2 / "val.jsonl", 1779),
    (QVM2 / "test.jsonl", 323),
    (CHARADES / "charades_sta_train.txt", 12408),
    (CHARADES / "charades_sta_test.txt", 3720),
    (CHARADES / "charades_train_release.jsonl", 12404),
    (CHARADES / "charades_test_release.jsonl", 3720),
])
def test_row_counts(path, count):
  records = annotations.load_annotations(path)
  assert len(records) == count
  assert all(isinstance(r, MomentRecord) for r in records)
  assert records[0].source == str(path) and records[0].line == 1


def test_qvh_fields():
  val = annotations.load_annotations(QVH / "highlight_val_release.jsonl")
  assert all(r.has_labels and r.has_saliency for r in val)
  assert all(len(r.saliency_scores) == len(r.relevant_clip_ids) for r in val)
  assert all(isinstance(r.windows[0][0], float) for r in val)
  assert len({r.vid for r in val}) == 1519
  test = annotations.load_annotations(QVH / "highlight_test_release.jsonl")
  assert not any(r.has_labels for r in test)
  assert all(r.relevant_clip_ids is None and r.saliency_scores is None for r in test)
  with_gt = annotations.load_annotations(QVH / "highlight_test_with_gt.jsonl")
  assert [r.qid for r in with_gt] == [r.qid for r in test]


def test_qvm2_optional_saliency():
  val = annotations.load_annotations(QVM2 / "val.jsonl")
  assert sum(r.saliency_scores is None for r in val) == 229
  assert all(r.relevant_clip_ids is not None for r in val)
  test = annotations.load_annotations(QVM2 / "test.jsonl")
  assert all(r.saliency_scores is None and r.has_labels for r in test)
  assert max(len(r.windows) for r in test) == 14


def test_charades_txt_form():
  records = annotations.load_annotations(CHARADES / "charades_sta_train.txt")
  first = records[0]
  assert (first.qid, first.vid, first.query, first.duration) == (0, "AO8RW", "a person is putting a book on a shelf.",
                                                                 None)
  assert first.windows == ((0.0, 6.9),)
  assert [r.qid for r in records] == list(range(len(records)))
  inverted = [(r.vid, r.windows[0]) for r in records if r.windows[0][0] >= r.windows[0][1]]
  assert sorted(inverted) == sorted([("LEOL6", (8.0, 7.0)), ("IOL8Q", (20.9, 12.0)), ("AKKWU", (38.0, 13.0)),
                                     ("AKKWU", (38.0, 13.0))])


def test_charades_jsonl_form():
  records = annotations.load_annotations(CHARADES / "charades_test_release.jsonl")
  assert records[0].qid == 12404 and records[-1].qid == 16123
  assert all(r.duration is not None and len(r.windows) == 1 for r in records)


@pytest.mark.parametrize("path", [QVH / "highlight_val_release.jsonl", QVH / "highlight_test_release.jsonl",
                                  QVM2 / "val.jsonl", CHARADES / "charades_sta_test.txt",
                                  CHARADES / "charades_test_release.jsonl"])
def test_round_trip(path, tmp_path):
  records = annotations.load_annotations(path)
  out = tmp_path / "out.jsonl"
  annotations.write_jsonl(records, out)
  again = annotations.load_annotations(out)
  assert _strip(again) == _strip(records)
  assert again[3].source == str(out) and again[3].line == 4


def test_wrong_spans_round_trip(tmp_path):
  record = MomentRecord(qid=5, vid="v", query="q", duration=150.0, windows=((2.0, 6.0),),
                        wrong_spans=((10.0, 14.0), (20.0, 22.0)))
  out = tmp_path / "ws.jsonl"
  annotations.write_jsonl([record], out)
  (loaded,) = annotations.load_annotations(out)
  assert loaded.wrong_spans == ((10.0, 14.0), (20.0, 22.0))
  assert _strip([loaded]) == [record]


def test_load_many(tmp_path):
  val = QVH / "highlight_val_release.jsonl"
  test = QVH / "highlight_test_release.jsonl"
  both = annotations.load_many(f"{val},{test}")
  assert len(both) == 1550 + 1542
  assert _strip(annotations.load_many([str(val), str(test)])) == _strip(both)
  assert len(annotations.load_many(str(test))) == 1542


@pytest.mark.parametrize("row, line_text, field", [
    ('{"qid": 1, "vid": "v", "query": "q", "duration": 150}\n{"qid": 7, "vid": "v", "query": "q", '
     '"duration": 150, "relevant_windows": [[0, "x"]]}', ":2:", "relevant_windows[0]"),
    ('{"qid": 7, "query": "q", "duration": 150}', ":1:", "vid"),
    ('{"qid": 7, "vid": "v", "query": 3, "duration": 150}', ":1:", "query"),
    ('{"qid": 7, "vid": "v", "query": "q", "duration": "long"}', ":1:", "duration"),
    ('{"qid": 7, "vid": "v", "query": "q", "duration": 150, "saliency_scores": [[1, 2, "a"]]}', ":1:",
     "saliency_scores[0]"),
    ('{"qid": 7, "vid": "v", "query": "q", "duration": 150, "wrong_spans": [[1, 2, 3]]}', ":1:", "wrong_spans[0]"),
])
def test_malformed_rows_name_file_line_qid_field(tmp_path, row, line_text, field):
  path = tmp_path / "bad.jsonl"
  path.write_text(row + "\n")
  with pytest.raises(annotations.AnnotationError) as info:
    annotations.load_annotations(path)
  message = str(info.value)
  assert str(path) in message and line_text in message and "qid=7" in message and f"field={field}" in message


def test_invalid_json_and_txt_errors(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"qid": 1, "vid": "v", "query": "q", "duration": 1}\n{"qid": 2,\n')
  with pytest.raises(annotations.AnnotationError, match=r"bad.jsonl:2: .*field=row: invalid JSON"):
    annotations.load_annotations(path)
  txt = tmp_path / "bad.txt"
  txt.write_text("AO8RW 0.0 6.9##fine\nAO8RW 0.0 x##oops\n")
  with pytest.raises(annotations.AnnotationError, match=r"bad.txt:2: qid=1 field=relevant_windows"):
    annotations.load_annotations(txt)


def test_json_written_is_qvh_style(tmp_path):
  (record,) = annotations.load_annotations(QVH / "highlight_val_release.jsonl")[:1]
  out = tmp_path / "one.jsonl"
  annotations.write_jsonl([record], out)
  row = json.loads(out.read_text())
  assert set(row) == {"qid", "query", "duration", "vid", "relevant_windows", "relevant_clip_ids", "saliency_scores"}
