"""`vinbig predict` on DICOMs: several encodings and photometric interpretations (synthetic and the real pydicom-data
chest), a folder holding bad files, boxes in original pixels equal to what predict-detector + predict-classifier +
fuse give on the same images, the DICOM GSPS read back, and the one-line errors of a bad --model.

The model is a real export (`vinbig export`) of fold models saved by hand with random weights (untrained, they find
boxes all the same: prediction costs and maps boxes whatever the weights), over the session's synthetic folds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import classifier_checkpoint, detector_checkpoint, gradient, make_dicom, own_work
from tiny import set_args
from vinbig.app.cli import main
from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, Work

FOLDS = 3  # the session's synthetic work folder's
# the export's config: the synthetic work folder's PNG size, tiny models, every box kept, several batches; two named
# runs of each stage, each with a key of its own (the detector's run b predicts at another size)
CONFIG = ["images.size=128", "detector.imgsz=64", "detector.conf=0.000001", "detector.predict_batch=4",
          "classifier.tta=hflip", "classifier.predict_batch=4", "classifier.workers=0",
          "runs.detector={a: {}, b: {imgsz: 96}}", "runs.classifier={c1: {}, c2: {tta: none}}"]
FUSION = ("fusion:\n  iou_thr: 0.5\n  conf_type: avg\n  low: 0.45\n  high: 0.5\n  run_weights: {b: 0.5}\n"
          "  classifier_weights: {c2: 2.0}\n")
COLUMNS = ["file", "image_id", "class_id", "class_name", "score", *BOX, "p_abnormal", "gate"]


def save_models(work: Work, cfg: dict) -> None:
    """Every fold's best.pt of every run of both stages, with random weights and head biases (fold 2's classifiers
    at another input size), and beside each the config training saves: the run's own section."""
    from vinbig.artifacts import config_path
    from vinbig.config import save_config
    from vinbig.runs import run_config, run_names

    for r, run in enumerate(run_names(cfg, "detector")):
        for k in range(FOLDS):
            detector_checkpoint(work.checkpoint("detector", k, "best", run), seed=10 * r + k, perturb=True, biases=True)
            save_config({**cfg, "detector": run_config(cfg, "detector", run)},
                        config_path(work.fold_dir("detector", k, run), "detector"), ["detector", "folds", "runs"])
    for r, run in enumerate(run_names(cfg, "classifier")):
        for k in range(FOLDS):
            # std 50: P(abnormal) from about 0.44 to 0.6 over two runs
            classifier_checkpoint(work.checkpoint("classifier", k, "best", run), seed=10 * r + k, std=50,
                                  imgsz=48 if k == 2 else 64)
            save_config({**cfg, "classifier": run_config(cfg, "classifier", run)},
                        config_path(work.fold_dir("classifier", k, run), "classifier"), ["classifier", "runs"])


@pytest.fixture(scope="module")
def export(synth_work, tmp_path_factory) -> tuple[Path, Path]:
    """(the work folder the models were saved in, its export by `vinbig export`)."""
    from vinbig.config import load_config

    root = tmp_path_factory.mktemp("predict_model")
    work = own_work(synth_work, root)
    save_models(Work(work), load_config(overrides=CONFIG))
    (work / "fusion.yaml").write_text(FUSION)
    assert main(["export", "--work", str(work), "--out", str(root / "export"), "-q", *set_args(CONFIG)]) == 0
    return work, root / "export"


def variant(src: Path, out: Path, photometric: str, syntax=None) -> Path:
    """`src`'s pixels stored again with `photometric` (MONOCHROME1: the values inverted, so the picture is the same)
    and the transfer syntax `syntax` (None: uncompressed), under a new SOP Instance UID."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    bits = int(ds.BitsStored)
    if photometric != ds.PhotometricInterpretation:
        arr = ((1 << bits) - 1 - arr).astype(arr.dtype)
    for key in ("WindowCenter", "WindowWidth"):  # the window was for the other polarity
        ds.pop(key, None)
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(out)])
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def inputs(synth_work, rg1_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(good/: the synthetic test DICOMs, three re-encodings of one and the real chest CR in JPEG 2000;
    bad/: a text file, a truncated DICOM and a DICOM without the study and series UIDs a GSPS needs)."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    root = tmp_path_factory.mktemp("predict_inputs")
    good, bad = root / "good", root / "bad"
    good.mkdir(), bad.mkdir()
    tests = sorted((synth_work.data / "test").glob("*.dicom"))
    for f in tests:
        shutil.copy(f, good / f.name)
    variant(tests[0], good / "mono1_j2k.dcm", "MONOCHROME1", JPEG2000Lossless)
    variant(tests[0], good / "mono2_rle.dcm", "MONOCHROME2", RLELossless)
    variant(tests[0], good / "mono1_native.dcm", "MONOCHROME1")
    shutil.copy(rg1_dir / "RG1_J2KR.dcm", good / "RG1_J2KR.dcm")
    (bad / "notes.dcm").write_text("not a DICOM file\n")
    whole = (good / "mono2_rle.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
    make_dicom(bad / "no_study.dcm", gradient(96, 80), WindowCenter=2048, WindowWidth=4096)
    return good, bad


def encodings(folder: Path) -> set[tuple[str, str]]:
    out = set()
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.add((str(ds.PhotometricInterpretation), ds.file_meta.TransferSyntaxUID.name))
    return out


@pytest.fixture(scope="module")
def predicted(export, inputs, tmp_path_factory) -> tuple[int, Path]:
    """`vinbig predict` of good/ and bad/ with --dicom-out, every box drawn: (exit code, DIR)."""
    good, bad = inputs
    out = tmp_path_factory.mktemp("predict_out") / "out"
    code = main(["predict", "--model", str(export[1]), str(good), str(bad), "--out", str(out), "--dicom-out",
                 "--draw-thr", "0", "--draw-max", "8", "-q"])
    return code, out


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype={"image_id": str})


@pytest.mark.slow
def test_every_encoding_is_predicted_and_a_bad_file_is_listed_while_the_others_go_on(inputs, predicted):
    good, bad = inputs
    code, out = predicted
    assert {("MONOCHROME1", "JPEG 2000 Image Compression (Lossless Only)"), ("MONOCHROME2", "RLE Lossless"),
            ("MONOCHROME1", "Explicit VR Little Endian"), ("MONOCHROME2", "Explicit VR Little Endian")} <= encodings(good)
    assert code == 1  # a file failed

    errors = pd.read_csv(out / "errors.csv")
    reasons = dict(zip(errors["file"].map(lambda f: Path(f).name), errors["reason"]))
    assert set(reasons) == {"notes.dcm", "truncated.dcm", "no_study.dcm"}
    assert reasons["notes.dcm"].startswith("not a DICOM file")
    assert "truncated" in reasons["truncated.dcm"]
    assert reasons["no_study.dcm"].startswith("no GSPS: the source header lacks StudyInstanceUID")

    t = table(out)
    assert list(t.columns) == COLUMNS
    predicted_ids = {p.stem for p in good.iterdir()} | {"no_study"}  # no_study is predicted, only its GSPS is not
    assert set(t["image_id"]) == predicted_ids
    images = t[t["class_id"].isna()]  # one row per image: P(abnormal) and the gate
    assert len(images) == len(predicted_ids) and images["p_abnormal"].between(0, 1).all()
    assert set(images["gate"]) <= {"normal", "unsure", "abnormal", "no box"} and images["gate"].nunique() > 1
    boxes = t[t["class_id"].notna() & (t["class_id"] != NO_FINDING)]
    assert (boxes["class_name"] == boxes["class_id"].astype(int).map(dict(enumerate(CLASS_NAMES)))).all()
    assert ((boxes["x_max"] > boxes["x_min"]) & (boxes["y_max"] > boxes["y_min"])).all()
    assert boxes[list(BOX)].notna().all().all() and (boxes[list(BOX)] >= 0).all().all()
    # in original pixels: the real chest's boxes reach beyond the 128 px of the converted image, within 1841 x 1955
    rg1 = boxes[boxes["image_id"] == "RG1_J2KR"]
    assert len(rg1) and rg1["x_max"].max() > 128 and (rg1["x_max"] <= 1841).all() and (rg1["y_max"] <= 1955).all()

    doc = json.loads((out / "predictions.json").read_text())
    by_id = {i["image_id"]: i for i in doc["images"]}
    assert set(by_id) == predicted_ids and {Path(f["file"]).name for f in doc["failed"]} == set(reasons)
    one = by_id["RG1_J2KR"]
    assert (one["width"], one["height"], one["sop_instance_uid"]) == (1841, 1955, pydicom.dcmread(
        good / "RG1_J2KR.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert [b["score"] for b in one["boxes"]] == pytest.approx(rg1["score"].tolist())
    import cv2

    for image_id in predicted_ids:  # an overlay each, enlarged to at least 768 px, coloured boxes where there are
        overlay = cv2.imread(str(out / "overlays" / f"{image_id}.png"))
        assert max(overlay.shape[:2]) >= 768
        coloured = (np.ptp(overlay.astype(int), axis=2) > 60).sum()
        assert coloured > 500 if image_id in set(boxes["image_id"]) else coloured == 0
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_boxes_in_original_pixels_equal_predict_detector_and_fuse(export, inputs, predicted, tmp_path):
    """The same images converted by `vinbig images`, predicted by predict-detector and predict-classifier and fused by
    fuse's code, in a work folder of the same models: the same boxes, scores, P(abnormal) and 'No finding'."""
    from fusion._stage import fusion_config, predict as fuse_split
    from fusion._gate import image_probabilities
    from vinbig.artifacts import read_classifier_preds

    work, model = export
    good, _ = inputs
    ref = tmp_path / "ref"
    (ref / "images").mkdir(parents=True)
    for name in ("folds.csv", "fusion.yaml", "detector", "classifier"):
        (ref / name).symlink_to(work / name)
    config = ["--config", str(model / "config.yaml")]
    assert main(["images", "--src", str(good), "--out", str(ref / "images" / "test"), "--workers", "1", "-q",
                 *config]) == 0
    assert main(["predict-detector", "--work", str(ref), "--split", "test", "--tta", "hflip", "-q", *config]) == 0
    assert main(["predict-classifier", "--work", str(ref), "--split", "test", "-q", *config]) == 0
    f = fusion_config(ref, model / "config.yaml")["fusion"]
    image_ids, final = fuse_split(ref, "test", f)[:2]
    p = image_probabilities(read_classifier_preds(Work(ref), "test"), f["classifier_weights"])

    t = table(predicted[1])
    t = t[t["image_id"].isin(image_ids)]
    assert set(t["image_id"]) == set(image_ids) == {p.stem for p in good.iterdir()}
    compared = 0
    for image_id in image_ids:
        ours, theirs = t[t["image_id"] == image_id], final[final["image_id"] == image_id]
        ours_boxes = ours[ours["class_id"].notna() & (ours["class_id"] != NO_FINDING)]
        theirs_boxes = theirs[theirs["class_id"] != NO_FINDING].sort_values("score", ascending=False, kind="stable")
        assert len(ours_boxes) == len(theirs_boxes), image_id
        compared += len(ours_boxes)
        np.testing.assert_allclose(ours_boxes[list(BOX)].to_numpy(), theirs_boxes[list(BOX)].to_numpy(), atol=1e-3)
        np.testing.assert_allclose(ours_boxes["score"].to_numpy(), theirs_boxes["score"].to_numpy(), rtol=1e-6)
        assert (ours_boxes["class_id"].to_numpy() == theirs_boxes["class_id"].to_numpy()).all()
        no_finding = theirs.loc[theirs["class_id"] == NO_FINDING, "score"]
        ours_nf = ours.loc[ours["class_id"] == NO_FINDING, "score"]
        assert len(ours_nf) == len(no_finding) and np.allclose(ours_nf, no_finding, atol=1e-9)
        assert ours.loc[ours["class_id"].isna(), "p_abnormal"].item() == pytest.approx(p[image_id], abs=1e-9)
    assert compared > 30  # boxes of the images the gate did not leave to 'No finding' alone


@pytest.mark.slow
def test_the_gsps_references_its_image_and_draws_the_predicted_boxes(inputs, predicted):
    good, _ = inputs
    _, out = predicted
    t = table(out)
    files = sorted((out / "gsps").glob("*.dcm"))
    assert {f.stem for f in files} == {p.stem for p in good.iterdir()}  # no_study has none
    boxes = 0
    for path in files:
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(good / Path(t.loc[t["image_id"] == path.stem, "file"].iloc[0]).name,
                                 stop_before_pixels=True)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State Storage
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.get("PatientID", "")
        ref = ds.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == source.SeriesInstanceUID
        assert ref.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        [annotation] = ds.GraphicAnnotationSequence
        assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        drawn = []
        for obj in annotation.get("GraphicObjectSequence", []):  # none where the gate left 'No finding' alone
            assert obj.GraphicType == "POLYLINE" and obj.GraphicAnnotationUnits == "PIXEL"
            xy = np.asarray(obj.GraphicData, dtype=np.float64).reshape(-1, 2)
            assert len(xy) == 5 and (xy[0] == xy[-1]).all()  # closed
            drawn.append([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
        rows = t[(t["image_id"] == path.stem) & t["class_id"].notna() & (t["class_id"] != NO_FINDING)].head(8)
        assert len(drawn) == len(rows)
        boxes += len(rows)
        np.testing.assert_allclose(np.array(drawn).reshape(-1, 4), rows[list(BOX)].to_numpy(), atol=1e-3)
        texts = [o.UnformattedTextValue for o in annotation.TextObjectSequence]
        for row, text in zip(rows.itertuples(), texts):
            assert text == f"{row.class_name} {row.score:.2f}"
        assert "NOT FOR DIAGNOSTIC USE" in texts[-1] and "P(abnormal)" in texts[-1]
    assert boxes > 20


@pytest.mark.slow
def test_a_work_folder_predicts_as_its_export_and_a_rerun_into_its_input_folder_exits_0(export, inputs, predicted,
                                                                                       tmp_path, capsys):
    """The work folder's own saved configs (no --set): the same predictions as its export. The output folder lies
    in the input folder: the second run leaves the first one's GSPS files out of its inputs."""
    work, _ = export
    good, _ = inputs
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(good / "mono1_j2k.dcm", study)
    out = study / "vinbig"
    for _ in range(2):
        assert main(["predict", "--model", str(work), str(study), "--out", str(out), "--dicom-out", "-q"]) == 0
        summary = capsys.readouterr().out
        assert "predicted 1 of 1 input(s)" in summary and "s per image (read and convert" in summary
    ours, theirs = table(out), table(predicted[1])
    theirs = theirs[theirs["image_id"] == "mono1_j2k"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours.drop(columns="file"), theirs.drop(columns="file"), rtol=1e-6)
    assert pd.read_csv(out / "errors.csv").empty and [p.name for p in (out / "gsps").iterdir()] == ["mono1_j2k.dcm"]


def export_without(export_dir: Path, tmp_path: Path, *missing: str) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(export_dir, copy)
    for rel in missing:
        (copy / rel).unlink()
    return copy


@pytest.mark.parametrize("make, words", [
    (lambda e, t: t / "nowhere", ["nowhere: not found", "vinbig export --work WORK --out DIR"]),
    (lambda e, t: t, ["neither config.yaml (an export) nor folds.csv (a work folder)"]),
    (lambda e, t: export_without(e, t, "config.yaml"),
     ["config.yaml not found, so the export is incomplete", "run 'vinbig export --work WORK --out"]),
    (lambda e, t: export_without(e, t, "detector/b/fold1/weights/best.safetensors"),
     ["detector/b/fold1/weights/best.safetensors not found (fold 1 of the detector run b)", "vinbig train-detector",
      "--run b --fold 1", "vinbig export --work WORK --out"]),
    (lambda e, t: export_without(e, t, "classifier/c2/fold2/best.yaml"),
     ["classifier/c2/fold2/best.yaml not found, while folds [0, 1] have a classifier"]),
])
def test_a_bad_model_is_one_line_naming_what_is_missing_and_the_command_that_makes_it(export, inputs, tmp_path,
                                                                                     caplog, make, words):
    model = make(export[1], tmp_path)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(inputs[0]), "--out", str(out), "-q"]) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in error and error.startswith(f"--model {model}")
    for w in words:
        assert w in error
    assert not out.exists()
