"""Targets, image datasets, augmentation and samplers of the classifier.

The PNGs of ``vinbig images`` are 8-bit greyscale with the long side at ``images.size`` and the aspect
kept; the classifier squashes them to ``imgsz`` x ``imgsz`` (the lungs fill a chest film, so a square
resize loses little) and feeds one channel, which the model step repeats to three (see ``_model``),
so that ImageNet-style weights of a timm model load unchanged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from vinbig.artifacts import NO_FINDING, ArtifactError, Work, images_command, png_path, read_folds, read_labels, read_meta
from vinbig.log import some

logger = logging.getLogger(__name__)

BALANCE = ("pos_weight", "sampler", "none")


def abnormal_targets(work: Work) -> pd.DataFrame:
    """``image_id, fold, abnormal`` for every converted image of folds.csv: abnormal = any finding in labels.csv."""
    folds, labels = read_folds(work), read_labels(work)
    abnormal = labels.assign(finding=labels["class_id"] != NO_FINDING).groupby("image_id")["finding"].any()
    out = folds.assign(abnormal=folds["image_id"].map(abnormal))
    missing = out["abnormal"].isna()
    if missing.any():
        raise ArtifactError(f"{int(missing.sum())} image(s) of {work.folds} are not in {work.labels} "
                            f"(first: {out.loc[missing, 'image_id'].iloc[0]}); run 'vinbig folds' again so that "
                            f"both files come from the same train.csv")
    converted = out["image_id"].isin(read_meta(work.images("train"))["image_id"])
    if not converted.all():  # a DICOM that failed to convert (images/train/errors.csv) is left out, not fatal
        logger.warning("%d image(s) of %s have no PNG in %s and are left out: %s", int((~converted).sum()),
                       work.folds, work.images("train"), some(out.loc[~converted, "image_id"]))
    return out[converted].assign(abnormal=lambda d: d["abnormal"].astype(int)).reset_index(drop=True)


def png_paths(image_dir: Path, image_ids: Sequence[str]) -> list[Path]:
    """The PNG of every image id; an error names the first missing one and the command that makes it."""
    paths = [png_path(image_dir, i) for i in image_ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ArtifactError(f"{len(missing)} of {len(paths)} PNG(s) are missing from {image_dir} "
                            f"(first: {missing[0].name}); run '{images_command(image_dir)}'")
    return paths


class PngDataset(Dataset):
    """``(image uint8 1 x imgsz x imgsz, target float, index)`` for each PNG; `transform` acts on the tensor.

    With several sizes (`imgsz` a tuple, for fold models trained at different sizes) the image is a dict
    ``{size: tensor}``: each PNG decoded once, resized to each size.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[float] | None, imgsz: int | Sequence[int],
                 transform=None):
        self.paths = list(paths)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)
        self.imgsz = imgsz if isinstance(imgsz, int) else tuple(int(s) for s in imgsz)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = cv2.imread(str(self.paths[i]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ArtifactError(f"{self.paths[i]} is not a readable PNG; delete it and run 'vinbig images' again")
        if isinstance(self.imgsz, int):
            x = self._tensor(image, self.imgsz)
        else:
            x = {size: self._tensor(image, size) for size in self.imgsz}
        y = 0.0 if self.targets is None else float(self.targets[i])
        return x, torch.tensor(y), i

    def _tensor(self, image: np.ndarray, imgsz: int) -> torch.Tensor:
        x = to_tensor(image, imgsz)
        return x if self.transform is None else self.transform(x)


def to_tensor(image: np.ndarray, imgsz: int) -> torch.Tensor:
    """A greyscale uint8 image (a PNG of ``vinbig images``) as the classifier's uint8 1 x imgsz x imgsz input."""
    if image.shape != (imgsz, imgsz):
        shrink = image.shape[0] > imgsz and image.shape[1] > imgsz
        image = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return torch.from_numpy(image)[None]


def worker_init(_: int) -> None:
    """Data-loader workers: one OpenCV thread each (the workers are the parallelism)."""
    cv2.setNumThreads(1)


def train_transform(cfg: dict):
    """Augmentation on a uint8 1 x H x W tensor: horizontal flip, small affine, brightness and contrast."""
    from torchvision.transforms import v2

    steps = []
    if cfg["hflip"] > 0:
        steps.append(v2.RandomHorizontalFlip(cfg["hflip"]))
    if cfg["degrees"] > 0 or cfg["translate"] > 0 or cfg["scale"] > 0:
        steps.append(v2.RandomAffine(degrees=cfg["degrees"], translate=(cfg["translate"],) * 2,
                                     scale=(1 - cfg["scale"], 1 + cfg["scale"]),
                                     interpolation=v2.InterpolationMode.BILINEAR))
    if cfg["brightness"] > 0 or cfg["contrast"] > 0:
        steps.append(v2.ColorJitter(brightness=cfg["brightness"], contrast=cfg["contrast"]))
    return v2.Compose(steps) if steps else None


class EpochSampler(Sampler[int]):
    """This process's share of a fresh order of the training set each epoch, the same on every process.

    ``balanced=False``: a permutation (like ``DistributedSampler``); ``balanced=True``: as many draws
    with replacement, each class drawn equally often on average. The order is padded by repeating its
    start to a multiple of `num_replicas`, and process `rank` takes every `num_replicas`-th index.
    """

    def __init__(self, targets: Sequence[float], num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 balanced: bool = False):
        self.targets = torch.tensor(np.asarray(targets), dtype=torch.long)
        self.num_replicas, self.rank, self.seed, self.balanced = num_replicas, rank, seed, balanced
        self.epoch = 0
        self.num_samples = math.ceil(len(self.targets) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.targets)
        if self.balanced:
            counts = torch.bincount(self.targets, minlength=2).clamp(min=1).float()
            order = torch.multinomial(1.0 / counts[self.targets], n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        total = self.num_samples * self.num_replicas
        order = torch.cat([order, order[: total - n]]) if total > n else order
        return iter(order[self.rank:total:self.num_replicas].tolist())


def shard(n: int, num_replicas: int, rank: int) -> list[int]:
    """Indices ``rank, rank + num_replicas, ...`` of ``range(n)``: each item once over all processes."""
    return list(range(rank, n, num_replicas))
