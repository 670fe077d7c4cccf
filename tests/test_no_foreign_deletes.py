"""Nothing is deleted or overwritten that vinbig did not write: `vinbig report`, `vinbig synth`, a detector fold's
dataset and a classifier fold's fresh start clean up only their own files (vinbig.manifest), and refuse a folder
that is not their output, with one line and exit 2, leaving it as it was."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from conftest import own_work
from test_fusion import make_classifier_preds, make_detector_preds
from vinbig.app.cli import main
from vinbig.artifacts import Work
from vinbig.errors import UserError
from vinbig.manifest import MANIFEST, Manifest

from detector import fold_dataset

SYNTH = ["--n-train", "3", "--n-test", "2", "--size", "64", "--workers", "1", "-q"]
TINY_CLASSIFIER = [arg for kv in ("backbone=test_efficientnet", "imgsz=64", "batch=8", "workers=0", "device=cpu")
                   for arg in ("--set", f"classifier.{kv}")]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links not followed) and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- vinbig report


@pytest.fixture
def oof_work(work_copy) -> Work:
    """A work folder of its own with out-of-fold predictions of both stages."""
    work = Work(work_copy.work)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")
    return work


def report(work: Work, *args: str) -> int:
    return main(["report", "--work", str(work.root), "-q", "--set", "fusion.report_images=1", *args])


def leave_out(work: Work, ids) -> None:
    """Drop images `ids` from labels.csv, folds.csv and the OOF predictions: a report without them."""
    for path in (work.labels, work.folds):
        df = pd.read_csv(path, dtype={"image_id": str})
        df[~df.image_id.isin(ids)].to_csv(path, index=False)
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")


def test_report_keeps_a_users_pictures_and_removes_its_own_stale_ones(oof_work, caplog):
    work = oof_work
    assert report(work) == 0
    out = work.report
    overlays = {p.name for p in (out / "overlays").glob("*.png")}
    thumbs = {p.name for p in (out / "images").glob("*.jpg")}
    assert overlays and thumbs
    (out / "overlays" / "mine.png").write_bytes(b"a user's picture")
    (out / "images" / "mine.jpg").write_bytes(b"a user's thumbnail")
    (out / "notes.txt").write_text("mine")

    gone = sorted(i.split("_")[-1][:-4] for i in overlays)[:2]  # images with an overlay and a thumbnail
    leave_out(work, gone)
    assert report(work, "--set", "fusion.report_images=0") == 0, errors(caplog)
    assert not list((out / "overlays").glob("0*.png"))  # the earlier report's overlays are removed
    assert {f"{i}.jpg" for i in gone} & {p.name for p in (out / "images").iterdir()} == set()
    assert (out / "overlays" / "mine.png").read_bytes() == b"a user's picture"
    assert (out / "images" / "mine.jpg").read_bytes() == b"a user's thumbnail"
    assert (out / "notes.txt").read_text() == "mine"


def test_report_never_replaces_a_users_file_of_the_name_it_writes(oof_work, caplog, tmp_path):
    work = oof_work
    ids = sorted(pd.read_csv(work.folds, dtype={"image_id": str}).image_id)
    keep = tmp_path / "saved"
    keep.mkdir()
    for path in (work.labels, work.folds):
        (keep / path.name).write_bytes(path.read_bytes())
    leave_out(work, ids[:1])
    assert report(work) == 0
    users = work.report / "images" / f"{ids[0]}.jpg"  # a name the next report writes, not vinbig's now
    users.write_bytes(b"a user's picture")
    for name in ("labels.csv", "folds.csv"):
        (work.root / name).write_bytes((keep / name).read_bytes())
    make_detector_preds(work, "oof")
    make_classifier_preds(work, "oof")
    before = snapshot(work.report)
    caplog.clear()
    assert report(work) == 2
    (line,) = errors(caplog)
    assert f"images/{ids[0]}.jpg" in line and "--overwrite" in line
    assert snapshot(work.report) == before
    assert report(work, "--overwrite") == 0 and users.read_bytes() != b"a user's picture"


@pytest.mark.parametrize("manifest", [True, False], ids=["predict-manifest", "no-manifest"])
def test_report_does_not_clean_a_folder_of_vinbig_predict_output(oof_work, caplog, tmp_path, manifest):
    out = tmp_path / "second_opinion"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "abc.png").write_bytes(b"predict's overlay")
    (out / "predictions.csv").write_text("image_id,p_abnormal\nabc,0.5\n")
    if manifest:
        Manifest(out, "predict", ["overlays/abc.png", "predictions.csv"]).save()
    before = snapshot(out)
    assert report(oof_work, "--out", str(out)) == 2
    assert len(errors(caplog)) == 1 and str(out) in errors(caplog)[0]
    assert snapshot(out) == before
    if manifest:  # --overwrite never takes over another command's output
        caplog.clear()
        assert report(oof_work, "--out", str(out), "--overwrite") == 2
        assert "predict output" in errors(caplog)[0] and snapshot(out) == before


def test_a_report_of_an_older_vinbig_is_refused_then_written_into_with_overwrite(oof_work, caplog):
    out = oof_work.report
    (out / "overlays").mkdir(parents=True)
    for name in ("index.html", "metrics.csv", "overlays/00_old.png"):
        (out / name).write_text("an older vinbig's report")
    before = snapshot(out)
    assert report(oof_work) == 2
    assert len(errors(caplog)) == 1 and "--overwrite" in errors(caplog)[0] and snapshot(out) == before
    assert report(oof_work, "--overwrite") == 0
    assert (out / "overlays" / "00_old.png").read_text() == "an older vinbig's report"  # nothing removed
    assert (out / "index.html").read_text() != "an older vinbig's report"
    assert Manifest.read(out).kind == "report" and report(oof_work) == 0  # later reports need no --overwrite


@pytest.mark.parametrize("sub", ["overlays", "images"])
def test_report_does_not_write_or_clean_through_a_link(oof_work, caplog, tmp_path, sub):
    mine = tmp_path / "my_pictures"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"png")
    (mine / "holiday.jpg").write_bytes(b"jpg")
    assert report(oof_work) == 0  # a report of its own, whose folder becomes a link to the user's
    (oof_work.report / sub).rename(tmp_path / "old")
    (oof_work.report / sub).symlink_to(mine, target_is_directory=True)
    assert report(oof_work) == 2
    assert len(errors(caplog)) == 1 and f"{oof_work.report / sub} is a link" in errors(caplog)[0]
    assert snapshot(mine) == {"holiday.jpg": b"jpg", "holiday.png": b"png"}


# --------------------------------------------------------------------------- vinbig synth


@pytest.mark.parametrize("files", [
    {"train.csv": "image_id,class_name\n", "sample_submission.csv": "image_id,PredictionString\n",
     "train/real.dicom": "DICM", "test/real.dicom": "DICM"},
    {"train/real.dicom": "DICM"},  # DICOMs only: synthetic ones would be mixed in
    {"folds.csv": "image_id,fold\n"},  # a work folder
], ids=["dataset", "dicoms", "other"])
def test_synth_into_a_folder_it_did_not_write_is_refused_and_writes_nothing(tmp_path, caplog, files):
    data = tmp_path / "data"
    for name, text in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(text)
    before, entries = snapshot(data), sorted(data.rglob("*"))
    assert main(["synth", "--out", str(data), *SYNTH]) == 2
    assert len(errors(caplog)) == 1 and str(data) in errors(caplog)[0] and "empty or new folder" in errors(caplog)[0]
    assert snapshot(data) == before and sorted(data.rglob("*")) == entries  # no DICOM, manifest or folder added


def test_synth_reruns_into_its_own_dataset_and_removes_only_its_own_stale_files(tmp_path, caplog):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), *SYNTH]) == 0
    first = {p.name for p in data.glob("t*/*.dicom")}
    (data / "train" / "mine.dicom").write_bytes(b"a user's DICOM")
    (data / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(data), *SYNTH, "--seed", "7"]) == 0, errors(caplog)
    now = {p.name for p in data.glob("t*/*.dicom")}
    assert not first & now and (data / "train" / "mine.dicom").read_bytes() == b"a user's DICOM"
    assert (data / "notes.txt").read_text() == "mine"
    train = pd.read_csv(data / "train.csv", dtype={"image_id": str})
    assert {f"{i}.dicom" for i in train.image_id} | {"mine.dicom"} == {p.name for p in data.glob("train/*.dicom")}
    assert Manifest.read(data).owns(data / "config_synth.yaml")


def test_synth_does_not_write_through_a_link_in_its_own_dataset(tmp_path, caplog):
    data, mine = tmp_path / "data", tmp_path / "my_dicoms"
    assert main(["synth", "--out", str(data), *SYNTH]) == 0
    mine.mkdir()
    (mine / "patient.dicom").write_bytes(b"a user's DICOM")
    (data / "test").rename(tmp_path / "old_test")
    (data / "test").symlink_to(mine, target_is_directory=True)
    before = snapshot(data)
    assert main(["synth", "--out", str(data), *SYNTH, "--seed", "7"]) == 2
    assert len(errors(caplog)) == 1 and f"{data / 'test'} is a link" in errors(caplog)[0]
    assert snapshot(data) == before and snapshot(mine) == {"patient.dicom": b"a user's DICOM"}


# --------------------------------------------------------------------------- a detector fold's dataset


def remake(work: Work) -> None:
    """Change labels.csv a little, so that fold 0's dataset is made again."""
    labels = pd.read_csv(work.labels, dtype={"image_id": str})
    labels.loc[labels.class_id != 14, "x_max"] -= 1
    labels.to_csv(work.labels, index=False)


@pytest.mark.parametrize("put", ["notes.txt", "images/train/extra.png", "mine/a.txt"])
def test_a_fold_dataset_with_a_users_file_is_not_removed(work_copy, put):
    work = Work(work_copy.work)
    folder = fold_dataset(work, 0).parent
    (folder / put).parent.mkdir(parents=True, exist_ok=True)
    (folder / put).write_text("mine")
    before = snapshot(folder)
    remake(work)
    with pytest.raises(UserError, match=f"{folder} holds 1 file.*{put.split('/')[0]}.*move them away"):
        fold_dataset(work, 0)
    assert snapshot(folder) == before
    (folder / put).unlink()
    if put.startswith("mine/"):
        (folder / "mine").rmdir()
    fold_dataset(work, 0)  # then it is made again
    assert (folder / "source.sha1").read_bytes() != before["source.sha1"]


@pytest.mark.parametrize("link", [True, False], ids=["link", "file"])
def test_a_link_or_file_in_place_of_a_fold_dataset_is_not_followed_or_removed(work_copy, tmp_path, link):
    work = Work(work_copy.work)
    folder = work.detector_data(0)
    folder.parent.mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "source.sha1").write_text("mine")
    if link:
        folder.symlink_to(mine, target_is_directory=True)
    else:
        folder.write_text("mine")
    with pytest.raises(UserError, match="is a (link|file), where vinbig keeps a fold's dataset"):
        fold_dataset(work, 0)
    assert snapshot(mine) == {"source.sha1": b"mine"}
    assert folder.is_symlink() if link else folder.read_text() == "mine"


@pytest.mark.parametrize("older", [False, True], ids=["manifest", "older-vinbig"])
def test_a_fold_dataset_is_made_again_in_place_of_its_own_files(work_copy, older):
    work = Work(work_copy.work)
    folder = fold_dataset(work, 0).parent
    (folder / "labels" / "train.cache").write_bytes(b"ultralytics")
    if older:  # a dataset of a vinbig before manifests
        (folder / MANIFEST).unlink()
    stale = folder / "labels" / "train" / "gone.txt"
    stale.write_text("")
    (folder / "images" / "train" / "gone.png").symlink_to(next((folder / "images" / "train").iterdir()).resolve())
    if not older:
        Manifest.read(folder).add([stale, folder / "images" / "train" / "gone.png"])
    remake(work)
    fold_dataset(work, 0)
    assert not stale.exists() and not (folder / "labels" / "train.cache").exists()
    assert Manifest.read(folder).kind == "detector-data" and Manifest.read(folder).owns(folder / "data.yaml")
    assert [p.name for p in folder.parent.iterdir()] == ["fold0"]  # no .partial or .old folder left


# --------------------------------------------------------------------------- a classifier fold's fresh start


def test_a_fresh_classifier_run_does_not_remove_weights_it_cannot_resume(synth_work, tmp_path, caplog):
    work = Work(own_work(synth_work, tmp_path))
    best = work.checkpoint("classifier", 0, "best")
    best.parent.mkdir(parents=True)
    best.write_bytes(b"weights copied from the machine that trained them")
    args = ["train-classifier", "--work", str(work.root), "--fold", "0", "--epochs", "1", "-q",
            *TINY_CLASSIFIER]
    assert main(args) == 2
    assert len(errors(caplog)) == 1 and "best.pt" in errors(caplog)[0] and "--overwrite" in errors(caplog)[0]
    assert best.read_bytes() == b"weights copied from the machine that trained them"
