"""vinbig.artifacts, the stage contract: the paths of a work folder, the readers' errors (the file and the command that
makes it) and the fold check."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vinbig.artifacts import (CLASSIFIER_PRED_COLUMNS, DEFAULT_RUN, DETECTOR_PRED_COLUMNS, FOLD_COLUMNS,
                              LABEL_COLUMNS, META_COLUMNS, READER_COLUMNS, Work, check_fold, fold_ids,
                              read_classifier_preds, read_csv, read_detector_preds, read_folds, read_labels,
                              read_meta, read_readers, train_command)
from vinbig.errors import ArtifactError, VinbigError

GARBAGE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x01" * 8  # neither UTF-8 text nor parquet


# --------------------------------------------------------------------------- paths


def test_work_paths_are_the_documented_layout(tmp_path):
    r = tmp_path / "work"
    w = Work(r)
    assert w.root == r
    assert w.images("train") == r / "images/train" and w.images("test") == r / "images/test"
    assert w.png("train", "abc") == r / "images/train/abc.png"
    assert w.labels == r / "labels.csv" and w.folds == r / "folds.csv"
    # a WORK without named runs: every stage's folds in the run "default"
    assert w.fold_dir("detector", 2) == r / "detector/default/fold2"
    assert w.fold_dir("classifier", 0) == r / "classifier/default/fold0"
    assert w.checkpoint("detector", 2, "last") == r / "detector/default/fold2/weights/last.pt"
    assert w.checkpoint("detector", 0) == r / "detector/default/fold0/weights/best.pt"  # best by default
    assert w.checkpoint("classifier", 3) == r / "classifier/default/fold3/best.pt"
    assert w.checkpoint("classifier", 1, "last") == r / "classifier/default/fold1/last.pt"
    assert w.classifier_summary(4) == r / "classifier/default/fold4/summary.csv"
    assert w.detector_data(1) == r / "detector/default/data/fold1"
    assert w.data_yaml(1) == r / "detector/default/data/fold1/data.yaml"
    assert w.readers == r / "readers.csv"
    assert w.detector_preds("oof") == r / "preds/detector_oof.parquet"
    assert w.detector_preds("test") == r / "preds/detector_test.parquet"
    assert w.classifier_preds("oof") == r / "preds/classifier_oof.csv"
    assert w.classifier_preds("test") == r / "preds/classifier_test.csv"
    assert w.fusion_config == r / "fusion.yaml" and w.submission == r / "submission.csv" and w.report == r / "report"


def test_work_paths_of_a_named_run(tmp_path):
    """Each named run has its own folder per stage: folds, checkpoints, summary and detector dataset."""
    r = tmp_path / "work"
    w = Work(r)
    assert w.run_dir("detector", "m640") == r / "detector/m640" and w.run_dir("classifier") == r / "classifier/default"
    assert w.fold_dir("detector", 1, "m640") == r / "detector/m640/fold1"
    assert w.fold_dir("classifier", 0, run="b3") == r / "classifier/b3/fold0"
    assert w.checkpoint("detector", 2, "last", "m640") == r / "detector/m640/fold2/weights/last.pt"
    assert w.checkpoint("detector", 0, run="m640") == r / "detector/m640/fold0/weights/best.pt"
    assert w.checkpoint("classifier", 3, run="b3") == r / "classifier/b3/fold3/best.pt"
    assert w.checkpoint("classifier", 1, "last", "b3") == r / "classifier/b3/fold1/last.pt"
    assert w.classifier_summary(4, "b3") == r / "classifier/b3/fold4/summary.csv"
    assert w.detector_data(1, "m640") == r / "detector/m640/data/fold1"
    assert w.data_yaml(1, "m640") == r / "detector/m640/data/fold1/data.yaml"
    # the runs share one prediction file per stage and split (their rows tell them apart by the run column)
    assert w.detector_preds("oof") == r / "preds/detector_oof.parquet"
    assert w.classifier_preds("test") == r / "preds/classifier_test.csv"


def test_train_command_names_the_run_unless_it_is_the_default(tmp_path):
    w = Work(tmp_path)
    assert train_command(w, "detector", 2) == f"vinbig train-detector --work {tmp_path} --fold 2"
    assert train_command(w, "detector", 2, DEFAULT_RUN) == f"vinbig train-detector --work {tmp_path} --fold 2"
    assert train_command(w, "classifier", 0, "b3") == f"vinbig train-classifier --work {tmp_path} --run b3 --fold 0"


def test_old_layout_hint_says_where_to_move_folds_of_a_vinbig_before_named_runs(tmp_path):
    w = Work(tmp_path)
    assert w.old_layout_hint("detector") == ""  # no WORK/detector at all
    (tmp_path / "detector" / "default" / "fold0").mkdir(parents=True)
    assert w.old_layout_hint("detector") == ""  # the new layout only
    for k in (1, 0):
        (tmp_path / "detector" / f"fold{k}" / "weights").mkdir(parents=True)
    (tmp_path / "detector" / "fold9.txt").write_text("a file, not a fold")
    hint = w.old_layout_hint("detector")
    assert "fold0, fold1 of a vinbig before named runs" in hint
    assert f"move them into {tmp_path / 'detector' / 'default'}/" in hint and "the run 'default'" in hint
    assert w.old_layout_hint("classifier") == ""


def test_work_of_takes_a_work_a_str_or_a_path(tmp_path):
    w = Work(tmp_path)
    assert Work.of(w) is w
    for given in (str(tmp_path), tmp_path):
        assert Work.of(given) == w and type(Work.of(given).root) is type(tmp_path)
    assert Work(str(tmp_path)).png("test", "x") == tmp_path / "images/test/x.png"


# --------------------------------------------------------------------------- readers


def readers(root: Path) -> list:
    """(read, path, made-by command, columns) of every reader, the commands written out as the user runs them."""
    w = Work(root)
    train = root / "images" / "train"
    return [
        (lambda: read_meta(train), train / "meta.csv", f"vinbig images --src DATA/train --out {train}", META_COLUMNS),
        (lambda: read_labels(w), root / "labels.csv", f"vinbig folds --train-csv DATA/train.csv --out {root}",
         LABEL_COLUMNS),
        (lambda: read_folds(w), root / "folds.csv", f"vinbig folds --train-csv DATA/train.csv --out {root}",
         FOLD_COLUMNS),
        (lambda: read_readers(w), root / "readers.csv", f"vinbig folds --train-csv DATA/train.csv --out {root}",
         READER_COLUMNS),
        (lambda: read_classifier_preds(w, "oof"), root / "preds/classifier_oof.csv",
         f"vinbig predict-classifier --work {root} --split oof", CLASSIFIER_PRED_COLUMNS),
        (lambda: read_classifier_preds(w, "test"), root / "preds/classifier_test.csv",
         f"vinbig predict-classifier --work {root} --split test", CLASSIFIER_PRED_COLUMNS),
        (lambda: read_detector_preds(w, "oof"), root / "preds/detector_oof.parquet",
         f"vinbig predict-detector --work {root} --split oof", DETECTOR_PRED_COLUMNS),
        (lambda: read_detector_preds(w, "test"), root / "preds/detector_test.parquet",
         f"vinbig predict-detector --work {root} --split test", DETECTOR_PRED_COLUMNS),
    ]


READERS = ["meta", "labels", "folds", "readers", "classifier_oof", "classifier_test", "detector_oof", "detector_test"]


def write_table(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def a_row(columns) -> pd.DataFrame:
    text = {"image_id": "007", "tta": "none", "run": "default", "rad_id": "R8"}
    return pd.DataFrame([{c: text.get(c, 1) for c in columns}])


@pytest.mark.parametrize("which", range(len(READERS)), ids=READERS)
def test_reader_of_a_missing_file_names_it_and_the_command_that_makes_it(tmp_path, which):
    read, path, command, _ = readers(tmp_path)[which]
    with pytest.raises(ArtifactError) as e:
        read()
    assert str(e.value) == f"{path.name} not found at {path}; run '{command}'"


@pytest.mark.parametrize("which", range(len(READERS)), ids=READERS)
def test_reader_of_binary_garbage_names_the_file_and_the_command(tmp_path, which):
    read, path, command, _ = readers(tmp_path)[which]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    with pytest.raises(ArtifactError) as e:
        read()
    kind = "parquet file" if path.suffix == ".parquet" else "CSV"
    assert str(e.value).startswith(f"{path} is not a readable {kind} (")
    assert str(e.value).endswith(f"; run '{command}' again")


@pytest.mark.parametrize("which", range(len(READERS)), ids=READERS)
def test_reader_of_an_empty_file_names_the_file_and_the_command(tmp_path, which):
    read, path, command, _ = readers(tmp_path)[which]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    with pytest.raises(ArtifactError, match="is not a readable") as e:
        read()
    assert str(path) in str(e.value) and f"run '{command}' again" in str(e.value)


@pytest.mark.parametrize("which", range(len(READERS)), ids=READERS)
def test_reader_of_a_file_lacking_a_column_names_the_column_and_the_command(tmp_path, which):
    read, path, command, columns = readers(tmp_path)[which]
    lacking = columns[-1]
    kept = [c for c in columns if c != lacking]
    write_table(path, a_row(kept))
    with pytest.raises(ArtifactError) as e:
        read()
    assert str(e.value) == (f"{path} lacks the columns [{lacking!r}] (it has {kept}); run '{command}' again")


@pytest.mark.parametrize("which", range(len(READERS)), ids=READERS)
def test_reader_of_a_good_file_keeps_image_ids_as_text(tmp_path, which):
    read, path, _, columns = readers(tmp_path)[which]
    write_table(path, a_row([*columns, "extra"]))  # more columns are fine
    df = read()
    assert df["image_id"].tolist() == ["007"]  # not the number 7
    assert set(columns) <= set(df.columns)


@pytest.mark.parametrize("which", ["classifier_oof", "detector_test"])
def test_run_names_that_look_like_numbers_stay_text(tmp_path, which):
    """A run named 640 (or 007) is the run "640", not the number 640, whichever file it is read from."""
    read, path, _, columns = readers(tmp_path)[READERS.index(which)]
    rows = pd.concat([a_row(columns)] * 2, ignore_index=True).assign(run=["640", "007"])
    write_table(path, rows)
    assert read()["run"].tolist() == ["640", "007"]


def test_read_detector_preds_reads_only_the_columns_asked_for(tmp_path):
    w = Work(tmp_path)
    write_table(w.detector_preds("oof"), a_row([*DETECTOR_PRED_COLUMNS, "extra"]))
    assert list(read_detector_preds(w, "oof").columns) == list(DETECTOR_PRED_COLUMNS)
    assert list(read_detector_preds(w, "oof", ["image_id", "score"]).columns) == ["image_id", "score"]


def test_read_detector_preds_refuses_a_csv_named_parquet(tmp_path):
    w = Work(tmp_path)
    path = w.detector_preds("test")
    path.parent.mkdir()
    a_row(DETECTOR_PRED_COLUMNS).to_csv(path, index=False)
    with pytest.raises(ArtifactError, match="is not a readable parquet file") as e:
        read_detector_preds(w, "test")
    assert f"run 'vinbig predict-detector --work {tmp_path} --split test' again" in str(e.value)


def test_read_csv_is_the_one_reader_any_stage_can_use(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    assert read_csv(path, ("a",), "make it").b.tolist() == [2]
    with pytest.raises(ArtifactError, match=r"lacks the columns \['c'\] .*run 'make it' again"):
        read_csv(path, ("a", "c"), "make it")
    assert issubclass(ArtifactError, VinbigError)  # the command line prints it and exits 2


# --------------------------------------------------------------------------- folds


@pytest.fixture
def three_folds(tmp_path) -> Work:
    w = Work(tmp_path)
    write_table(w.folds, pd.DataFrame({"image_id": ["a", "b", "c", "d"], "fold": [2, 0, 1, 0]}))
    return w


def test_fold_ids_are_sorted_ints(three_folds):
    assert fold_ids(read_folds(three_folds)) == [0, 1, 2]
    assert all(type(k) is int for k in fold_ids(read_folds(three_folds)))


def test_check_fold_accepts_known_folds_and_returns_them_all(three_folds):
    assert check_fold(three_folds, 1) == [0, 1, 2]
    assert check_fold(three_folds, [0, 2]) == [0, 1, 2]


def test_check_fold_names_the_unknown_fold_and_the_known_ones(three_folds):
    with pytest.raises(ArtifactError) as e:
        check_fold(three_folds, 7)
    assert str(e.value) == (f"fold 7 is not in {three_folds.folds}, whose folds are [0, 1, 2]; give --fold 0..2")


def test_check_fold_names_every_unknown_fold(three_folds):
    with pytest.raises(ArtifactError) as e:
        check_fold(three_folds, [5, 1, 3])
    assert str(e.value).startswith(f"folds 3, 5 are not in {three_folds.folds}, whose folds are [0, 1, 2]")


def test_check_fold_with_a_table_reads_no_file(tmp_path):
    table = pd.DataFrame({"image_id": ["a", "b"], "fold": [0, 1]})
    assert check_fold(Work(tmp_path), 1, table) == [0, 1]  # tmp_path has no folds.csv
    with pytest.raises(ArtifactError, match=r"fold 2 is not in .*folds.csv, whose folds are \[0, 1\]"):
        check_fold(Work(tmp_path), 2, table)


def test_check_fold_without_folds_csv_says_how_to_make_it(tmp_path):
    with pytest.raises(ArtifactError, match="folds.csv not found .*run 'vinbig folds --train-csv DATA/train.csv"):
        check_fold(Work(tmp_path), 0)
