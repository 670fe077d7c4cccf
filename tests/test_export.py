"""`vinbig export` and `copy_work` (vinbig.app.kaggle) on work folders made by hand: what an export holds, in WORK's
layout (each best.pt as best.safetensors and best.yaml), its config.yaml, the errors that name the missing fold and
its command, and what a second export removes."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import classifier_checkpoint, detector_checkpoint
from vinbig.artifacts import Work
from vinbig.app.cli import main
from vinbig.config import load_config
from vinbig.manifest import MANIFEST

FUSION_YAML = "fusion:\n  iou_thr: 0.5\n  low: 0.1\n"


def fake_work(root: Path, detectors=(0, 1), classifiers=(), folds=(0, 1), fusion: bool = False,
              runs: bool = False) -> Path:
    """A work folder with folds.csv over `folds` and tiny untrained best.pt files (as training saves them: export
    converts them) for the folds named; `fusion`: with the fusion.yaml of 'vinbig tune'; `runs`: with more files of
    a training run."""
    work = root / "work"
    work.mkdir(parents=True)
    pd.DataFrame({"image_id": [f"img{k}" for k in folds], "fold": list(folds)}).to_csv(work / "folds.csv", index=False)
    w = Work(work)
    for stage, ks in (("detector", detectors), ("classifier", classifiers)):
        for k in ks:
            save_checkpoint(w.checkpoint(stage, k), stage, k)
            if runs:
                w.checkpoint(stage, k, "last").write_bytes(b"last")
                log = w.fold_dir(stage, k) / "results.csv" if stage == "detector" else w.classifier_summary(k)
                log.write_text("epoch\n1\n")
    if fusion:
        (work / "fusion.yaml").write_text(FUSION_YAML)
    return work


def save_checkpoint(path: Path, stage: str, seed: int) -> Path:
    """A tiny untrained best.pt of `stage` at `path`, its weights drawn with `seed`."""
    if stage == "detector":
        return detector_checkpoint(path, seed=seed, arch="yolov8n.yaml")
    return classifier_checkpoint(path, seed=seed, std=1.0)


def exported(*best: str) -> list[str]:
    """The files an export holds for the best.pt paths `best`."""
    return [f"{b[:-3]}{suffix}" for b in best for suffix in (".safetensors", ".yaml")]


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def export(work: Path, out: Path, *extra: str) -> int:
    return main(["export", "--work", str(work), "--out", str(out), "-q", *extra])


@pytest.mark.parametrize("setup, words", [
    (lambda root: (root / "work").mkdir(), ["work/folds.csv not found", "vinbig folds"]),
    (lambda root: fake_work(root, detectors=(0,)), ["detector/default/fold1/weights/best.pt not found",
                                                     "vinbig train-detector --work", "--fold 1"]),
    (lambda root: fake_work(root, classifiers=(1,)), ["classifier/default/fold0/best.pt not found",
                                                      "train-classifier", "--no-classifier"]),
])
def test_export_names_the_missing_file_and_the_command_that_makes_it(tmp_path, caplog, setup, words):
    setup(tmp_path)
    out = tmp_path / "models"
    assert main(["export", "--work", str(tmp_path / "work"), "--out", str(out)]) == 2
    for w in words:
        assert w in caplog.text
    assert not (out / "config.yaml").exists()


def test_a_missing_detector_fold_is_named_with_its_train_command_and_nothing_is_copied(tmp_path, caplog):
    work = fake_work(tmp_path, detectors=(0, 2), folds=(0, 1, 2))
    out = tmp_path / "models"
    assert export(work, out) == 2
    assert (f"fold 1 of {work / 'folds.csv'} has no trained detector" in caplog.text
            and f"run 'vinbig train-detector --work {work} --fold 1'" in caplog.text)
    assert "fold 0 " not in caplog.text and "fold 2 " not in caplog.text
    assert not out.exists() or files(out) == []


def test_export_keeps_the_layout_and_removes_what_an_earlier_export_left(tmp_path):
    out = tmp_path / "models"
    assert export(fake_work(tmp_path / "a", folds=(0, 1, 7), detectors=(0, 1, 7)), out) == 0
    assert (out / "detector/default/fold7/weights/best.safetensors").is_file()
    (out / "dataset-metadata.json").write_text("{}")  # what the user put there stays
    work = fake_work(tmp_path, classifiers=(0, 1))
    assert main(["export", "--work", str(work), "--out", str(out), "--set", "detector.imgsz=320", "-q"]) == 0
    assert files(out) == sorted([*exported("classifier/default/fold0/best.pt", "classifier/default/fold1/best.pt"),
                                 "config.yaml", "dataset-metadata.json",
                                 *exported("detector/default/fold0/weights/best.pt",
                                           "detector/default/fold1/weights/best.pt"), "folds.csv"])
    assert yaml.safe_load((out / "classifier/default/fold1/best.yaml").read_text()) == {"backbone": "test_efficientnet",
                                                                                       "imgsz": 64}
    assert yaml.safe_load((out / "config.yaml").read_text())["detector"]["imgsz"] == 320

    assert main(["export", "--work", str(work), "--out", str(out), "--no-classifier", "-q"]) == 0
    assert not list(out.glob("classifier/default/fold*/best.*"))  # inference would otherwise use them
    assert (out / "dataset-metadata.json").read_text() == "{}"


def test_every_exported_file_is_the_work_folders_at_the_same_relative_path(tmp_path):
    from safetensors.torch import load_file

    work = fake_work(tmp_path, classifiers=(0, 1), fusion=True, runs=True)  # last.pt, summaries: not exported
    out = tmp_path / "models"
    assert export(work, out) == 0
    exported_files = [f for f in files(out) if f != "config.yaml"]
    best = ["classifier/default/fold0/best.pt", "classifier/default/fold1/best.pt",
            "detector/default/fold0/weights/best.pt", "detector/default/fold1/weights/best.pt"]
    assert exported_files == sorted([*exported(*best), "folds.csv", "fusion.yaml"])
    for rel in ("folds.csv", "fusion.yaml"):
        assert (out / rel).read_bytes() == (work / rel).read_bytes(), rel
    for rel in best:  # the same tensors as the work folder's checkpoint, nothing pickled
        import torch

        ckpt = torch.load(work / rel, weights_only=False)
        state = ckpt["model"] if isinstance(ckpt["model"], dict) else ckpt["model"].state_dict()
        tensors = load_file(out / rel.replace(".pt", ".safetensors"))
        assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state), rel
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.pt"))


def test_config_yaml_is_the_resolved_config_written_last(tmp_path):
    work = fake_work(tmp_path, fusion=True)
    config = tmp_path / "train.yaml"
    config.write_text("images:\n  size: 512\ndetector:\n  imgsz: 640\n  epochs: 3\n")
    out = tmp_path / "models"
    assert export(work, out, "--config", str(config), "--set", "detector.imgsz=768") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # every section, resolved as training resolved it: defaults, --config, --set
    assert saved == load_config(config, ["detector.imgsz=768"])
    assert (saved["images"]["size"], saved["detector"]["imgsz"], saved["detector"]["epochs"]) == (512, 768, 3)
    # the device is left to the inference machine, not fixed to this one
    assert saved["detector"]["device"] is None and saved["classifier"]["device"] is None
    # fusion.yaml is exported as a file of its own: config.yaml keeps the config's fusion values
    assert saved["fusion"] == load_config()["fusion"]
    written = {rel: (out / rel).stat().st_mtime_ns for rel in files(out)}
    assert written["config.yaml"] == max(written.values())


def test_the_exported_config_leaves_the_device_to_the_inference_session(tmp_path, caplog):
    """Trained on two GPUs, inferred on a CPU session: config.yaml must not send it to GPU 0."""
    work = fake_work(tmp_path)
    out = tmp_path / "models"
    trained_on = ["detector.device=0,1", "classifier.device=cpu"]
    with caplog.at_level(logging.INFO):
        assert main(["export", "--work", str(work), "--out", str(out), *[a for s in trained_on for a in ("--set", s)]]
                    ) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["detector"]["device"] is None and saved["classifier"]["device"] is None
    expected = load_config(overrides=trained_on)
    for section in ("detector", "classifier"):
        expected[section]["device"] = None
    assert saved == expected  # nothing else changed
    assert ("config.yaml has detector.device and classifier.device null instead of detector.device 0,1, "
            "classifier.device cpu: inference runs on the GPU of its session if it has one, else on the CPU"
            in caplog.text)


def test_an_interrupted_export_does_not_look_complete(tmp_path, monkeypatch, caplog):
    """config.yaml of an earlier export is removed first and written only once every file is there."""
    import safetensors.torch

    work = fake_work(tmp_path)
    out = tmp_path / "models"
    assert export(work, out) == 0
    before = (out / "detector/default/fold1/weights/best.safetensors").read_bytes()
    save_checkpoint(work / "detector/default/fold1/weights/best.pt", "detector", 99)  # retrained
    real = safetensors.torch.save_file

    def save_then_fail(tensors, filename, *args, **kwargs):
        if "fold1" in str(filename):
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_fail)
    assert export(work, out) == 2  # one line, no traceback
    assert f"cannot write {out / 'detector/default/fold1/weights/best.safetensors'}: No space left on device" \
        in caplog.text
    assert not (out / "config.yaml").exists()
    assert not list(out.rglob("*.partial"))
    # the old file, never half-written
    assert (out / "detector/default/fold1/weights/best.safetensors").read_bytes() == before


def test_export_without_tuning_warns_and_a_second_export_drops_the_stale_fusion_yaml(tmp_path, caplog):
    work = fake_work(tmp_path, fusion=True)
    out = tmp_path / "models"
    assert export(work, out) == 0 and (out / "fusion.yaml").read_text() == FUSION_YAML
    (work / "fusion.yaml").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert export(work, out) == 0
    assert not (out / "fusion.yaml").exists()  # inference would fuse with values of another run
    assert f"run 'vinbig tune --work {work}'" in caplog.text
    assert f"removed {out / 'fusion.yaml'}" in caplog.text


def test_a_second_export_of_fewer_folds_removes_the_stale_models(tmp_path):
    out = tmp_path / "models"
    assert export(fake_work(tmp_path / "a", folds=(0, 1, 2), detectors=(0, 1, 2), classifiers=(0, 1, 2)), out) == 0
    assert len(list(out.glob("*/*/fold*/**/best.safetensors"))) == 6
    assert export(fake_work(tmp_path / "b", classifiers=(0, 1)), out) == 0
    assert files(out) == sorted([*exported("classifier/default/fold0/best.pt", "classifier/default/fold1/best.pt",
                                           "detector/default/fold0/weights/best.pt",
                                           "detector/default/fold1/weights/best.pt"), "config.yaml", "folds.csv"])


def test_no_classifier_exports_the_detectors_even_when_some_classifier_folds_are_missing(tmp_path):
    work = fake_work(tmp_path, classifiers=(1,))
    out = tmp_path / "models"
    assert export(work, out, "--no-classifier") == 0
    assert not (out / "classifier").exists()
    assert files(out) == sorted(["config.yaml", "folds.csv", *exported("detector/default/fold0/weights/best.pt",
                                                                       "detector/default/fold1/weights/best.pt")])


def test_export_warns_when_the_config_differs_from_the_training_sizes(tmp_path, caplog):
    work = fake_work(tmp_path)
    (work / "images/train").mkdir(parents=True)
    (work / "images/train/config_images.yaml").write_text("images:\n  size: 128\n")
    (work / "detector/default/fold1/config_detector.yaml").write_text("detector:\n  imgsz: 64\n")
    with caplog.at_level(logging.WARNING):
        assert export(work, tmp_path / "models") == 0  # the default sizes: 1024 and 1024
    assert "says images.size=128 but the exported config has 1024" in caplog.text
    assert "says detector.imgsz=64 but the exported config has 1024" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert export(work, tmp_path / "models", "--set", "images.size=128", "--set", "detector.imgsz=64") == 0
    assert "but the exported config has" not in caplog.text


@pytest.mark.parametrize("where, words", [("same", "is the work folder itself"), ("missing", "is not a folder")])
def test_export_refuses_its_own_work_folder_and_a_missing_one(tmp_path, caplog, where, words):
    work = fake_work(tmp_path) if where == "same" else tmp_path / "nowhere"
    out = work if where == "same" else tmp_path / "models"
    assert export(work, out) == 2
    assert words in caplog.text
    assert not (out / "config.yaml").exists()


# --------------------------------------------------------------------------- copy_work


def test_copy_work_skips_what_is_there_and_the_detector_datasets(tmp_path):
    from vinbig.app.kaggle import copy_work

    src = fake_work(tmp_path / "a")
    (src / "detector/default/data/fold0").mkdir(parents=True)
    (src / "detector/default/data/fold0/data.yaml").write_text("path: .\n")
    (src / "folds.csv").chmod(0o444)  # an attached dataset is read-only
    dst = tmp_path / "b" / "work"
    assert copy_work(src, dst)["copied"] == 3  # folds.csv and two best.pt
    assert (dst / "folds.csv").stat().st_mode & 0o200  # the copy is writable
    assert (dst / "detector/default/fold1/weights/best.pt").read_bytes() == \
        (src / "detector/default/fold1/weights/best.pt").read_bytes()
    assert not (dst / "detector/default/data").exists()
    assert copy_work(src, dst)["copied"] == 0
    (src / "folds.csv").chmod(0o644)
    (src / "folds.csv").write_text("image_id,fold\nimg0,0\n")
    assert copy_work(src, dst)["copied"] == 1 and (dst / "folds.csv").read_text() == "image_id,fold\nimg0,0\n"


def test_an_export_copied_into_an_empty_work_folder_is_that_work_folder(tmp_path):
    """What the inference notebook does: copy_work(MODELS, WORK) gives the folds, fusion.yaml and models."""
    from vinbig.app.kaggle import copy_work, missing_models

    work = fake_work(tmp_path, classifiers=(0, 1), fusion=True)
    out = tmp_path / "models"
    assert export(work, out) == 0
    fresh = tmp_path / "kaggle" / "work"
    copy_work(out, fresh)
    assert missing_models(fresh, "detector", ["default"]) == [] and missing_models(fresh, "classifier", ["default"]) == []
    assert (fresh / "fusion.yaml").read_text() == FUSION_YAML


def test_export_carries_every_named_run(tmp_path, caplog):
    """Each detector and classifier run of the config is exported, and the config with its runs section."""
    work = fake_work(tmp_path, detectors=(), folds=(0, 1))
    w = Work(work)
    for stage, run in (("detector", "a"), ("detector", "b"), ("classifier", "x")):
        for k in (0, 1):
            save_checkpoint(w.checkpoint(stage, k, "best", run), stage, k)
    runs = ["--set", "runs.detector={a: {}, b: {imgsz: 640}}", "--set", "runs.classifier={x: {}}"]
    out = tmp_path / "models"
    assert export(work, out, *runs) == 0
    assert files(out) == sorted([*exported("classifier/x/fold0/best.pt", "classifier/x/fold1/best.pt",
                                           "detector/a/fold0/weights/best.pt", "detector/a/fold1/weights/best.pt",
                                           "detector/b/fold0/weights/best.pt", "detector/b/fold1/weights/best.pt"),
                                 "config.yaml", "folds.csv"])
    assert set(load_config(out / "config.yaml")["runs"]["detector"]) == {"a", "b"}
    (work / "detector/b/fold1/weights/best.pt").unlink()
    assert export(work, tmp_path / "again", *runs) == 2
    assert "has no trained detector of run b" in caplog.text
    assert f"run 'vinbig train-detector --work {work} --run b --fold 1'" in caplog.text
