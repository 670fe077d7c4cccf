"""What the benchmarks share: the repository's paths, `vinbig` in-process, and fold models saved by hand (as training
saves them, from random weights: prediction costs the same whatever the weights). tests/conftest.py takes the
checkpoint helpers from here too."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
FOLDS = 5


def vinbig(*args: str) -> None:
    """`vinbig ARGS -q` in this process; stops the script when it fails."""
    from vinbig.app.cli import main

    if main([*args, "-q"]) != 0:
        raise SystemExit(f"vinbig {' '.join(args)} failed")


def detector_checkpoint(path: Path, seed: int | None = None, perturb: bool = False, biases: bool = False,
                        arch: str = "yolov8n.yaml", **ckpt) -> Path:
    """An untrained YOLO (`arch`) of the 14 findings at `path`, saved in half precision as ultralytics saves a
    finished run (`ckpt` replaces keys: an interrupted run's epoch, optimizer, train_args). `seed`: torch's seed
    before the model is built; `biases`: random box and class head biases (an untrained head finds no box above
    conf); `perturb`: random noise on every weight too (untrained, every fold would give the same boxes)."""
    import torch

    from detector import follow_log_level  # noqa: F401  (ultralytics offline before it is imported)
    from ultralytics.nn.tasks import DetectionModel

    if seed is not None:
        torch.manual_seed(seed)
    model = DetectionModel(arch, nc=14, verbose=False)
    with torch.no_grad():
        if perturb:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1 * (p.std() if p.numel() > 1 else 1))
        if biases:
            for head in (*model.model[-1].cv2, *model.model[-1].cv3):  # box and class outputs
                head[-1].bias.normal_(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.half(), "epoch": -1, "optimizer": None, "train_args": {}, "date": None, **ckpt}, path)
    return path


def classifier_checkpoint(path: Path, seed: int | None = None, std: float | None = None, imgsz: int = 64,
                          backbone: str = "test_efficientnet") -> Path:
    """A best.pt as train-classifier writes one, of an untrained `backbone` trained at `imgsz`. `seed`: torch's
    seed before the model is built; `std`: a random head of that spread (the untrained head gives 0.5
    everywhere)."""
    import torch

    from classifier import create_model, save_checkpoint

    if seed is not None:
        torch.manual_seed(seed)
    model = create_model(backbone)
    if std is not None:
        torch.nn.init.normal_(model.get_classifier().weight, std=std)
    save_checkpoint({"model": model.state_dict(), "backbone": backbone, "imgsz": imgsz, "epoch": 0, "auc": 0.5}, path)
    return path
