"""The one tiny configuration of the tests that run the whole job (`vinbig demo`, the Kaggle notebooks): every stage
in seconds on a CPU, 2 folds, 64 px models trained for one epoch, a fusion grid of one WBF setting and two gates.

The keys are `--set` overrides (``section.key=value``, values as YAML) that hold on top of configs/default.yaml and
configs/demo.yaml alike.
"""

from __future__ import annotations

N_FOLDS = 2

# a dataset for the demo to make (the notebooks take the session's synth_work dataset)
SYNTH = ["synth.n_train=24", "synth.n_test=4", "synth.size=128", "synth.workers=1", "synth.abnormal_fraction=0.5"]

TINY = [
    "images.size=128", "images.workers=1", f"folds.n_folds={N_FOLDS}",
    "detector.model=yolov8n.yaml", "detector.imgsz=64", "detector.epochs=1", "detector.batch=8",
    "detector.device=cpu", "detector.workers=0", "detector.plots=false",
    "detector.conf=0.000001",  # keep every box: a one-epoch model scores low
    "classifier.backbone=test_efficientnet", "classifier.imgsz=64", "classifier.epochs=1", "classifier.batch=8",
    "classifier.workers=0", "classifier.device=cpu", "classifier.predict_batch=16",
    "fusion.tune_iou_thr=[0.4]", "fusion.tune_skip_box_thr=[0.0]", "fusion.tune_conf_type=[avg]",
    "fusion.tune_low=[0.0,0.1]", "fusion.tune_high=[0.9]", "fusion.workers=1", "fusion.report_images=1",
]


def set_args(overrides: list[str]) -> list[str]:
    """``--set`` before each override: arguments of a vinbig command."""
    return [arg for s in overrides for arg in ("--set", s)]
