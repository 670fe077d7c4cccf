"""A synthetic dataset in the layout of the Kaggle competition, shaped by the facts in docs/competition.md (The real data).

``make_dataset(out)`` writes::

    out/train/<image_id>.dicom   chest-like radiographs, about `abnormal_fraction` of them with lesions
    out/test/<image_id>.dicom    the same generator
    out/train.csv                three readers per train image: boxes, or one "No finding" row each
    out/sample_submission.csv    every test image once with "14 1 0 0 1 1"
    out/private/test_labels.csv  the test images' truth (LABEL_COLUMNS): the latent lesions, for
                                 `vinbig score` only; no stage reads it (the synthetic leaderboard)
    out/.vinbig-manifest.json    what vinbig wrote there (vinbig.manifest, kind "synth")

`out` must be missing, empty or a synthetic dataset of vinbig's (its manifest): a real dataset, or any folder
holding files vinbig did not write, is refused before anything is written. A rerun into its own dataset removes the
DICOMs of the earlier run that it does not write again (another seed or size), and only those.

The images show torso, lungs, mediastinum, heart, diaphragm, ribs, clavicles and humeri; one painter
per class draws a lesion inside its latent box, which each reader then draws after the habits of their
kind (HABITS): the fourteen careful readers close to the latent box, the prolific R8, R9 and R10 with
more misses, more spurious boxes and tighter, more jittered boxes (docs/competition.md, The synthetic
data). The files vary like the real ones: MONOCHROME1 and 2, BitsStored 12 to 16, window and rescale
tags or none, JPEG 2000 lossless or Explicit VR Little Endian, sizes around `size`, never square.

Every image draws from its own generator ``np.random.default_rng([seed, split, index])``, and every UID
and date derives from it, so the same seed gives byte-identical files whatever the number of workers.
An image's size, anatomy and noise come before and apart from its labels: the same seed with
``abnormal_fraction=0`` gives every image's lesion-free twin. The readers draw from a child generator
of their own, so their habits can change without changing any image.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from vinbig.artifacts import (BOX, CLASS_NAMES, LABEL_COLUMNS, NO_FINDING, NO_FINDING_PREDICTION, SUBMISSION_COLUMNS,
                              TRAIN_COLUMNS, atomic_path, write_csv)
from vinbig.errors import ConfigError, UserError
from vinbig.log import progress
from vinbig.manifest import MANIFEST, Manifest
from vinbig.parallel import n_workers, process_map

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
KIND = "synth"  # the manifest kind of a synthetic dataset
PRIVATE_TRUTH = Path("private") / "test_labels.csv"  # under the dataset folder: the test truth no stage reads
TRUTH_READERS = 5  # the test truth stands for a consensus of five radiologists (docs/competition.md, Metric)
RENDER_MAX = 768  # anatomy and lesions are drawn with a long side of at most this, then resized
REF_W, REF_H = 2600.0, 2850.0  # the image size the per-class pixel figures are taken at (a modelling choice: docs/competition.md, Classes and boxes)

# Readers R1..R17 weighted like their rows in the real train.csv: R8, R9 and R10 did most of the work.
READERS = tuple(f"R{k}" for k in range(1, 18))
_ROWS = dict(zip([r for r in READERS if r not in ("R8", "R9", "R10")], np.linspace(800, 3100, 14)),
             R8=12198, R9=15708, R10=13292)
READER_P = np.array([_ROWS[r] for r in READERS]) / sum(_ROWS.values())

# Per class, from docs/competition.md (Classes and boxes): images with the class (sampling weight), median box w, h and centre x, y in px
# of a ~2600 x 2850 image; then the log-normal sigma of the box size, the sd of the centre (fraction of
# the image) and whether the lesion may sit in either lung (mirrored about the midline).
CLASSES = {
    0: (3067, 293, 329, 1409, 922, 0.20, 0.012, False),  # Aortic enlargement
    1: (186, 529, 556, 947, 950, 0.30, 0.05, True),  # Atelectasis
    2: (452, 157, 178, 1406, 1042, 0.35, 0.10, False),  # Calcification
    3: (2300, 1061, 377, 1410, 1672, 0.10, 0.012, False),  # Cardiomegaly
    4: (353, 470, 521, 926, 1211, 0.30, 0.05, True),  # Consolidation
    5: (386, 562, 1026, 1106, 1392, 0.25, 0.04, True),  # ILD
    6: (613, 469, 529, 1002, 1142, 0.30, 0.05, True),  # Infiltration
    7: (1322, 390, 404, 944, 1296, 0.35, 0.05, True),  # Lung Opacity
    8: (826, 102, 100, 1075, 1272, 0.55, 0.06, True),  # Nodule/Mass
    9: (1134, 296, 364, 1058, 1322, 0.35, 0.06, True),  # Other lesion
    10: (1032, 217, 287, 726, 1871, 0.25, 0.02, True),  # Pleural effusion
    11: (1981, 232, 152, 1032, 610, 0.25, 0.025, True),  # Pleural thickening
    12: (96, 704, 810, 774, 1177, 0.20, 0.03, True),  # Pneumothorax
    13: (1617, 299, 273, 998, 984, 0.30, 0.05, True),  # Pulmonary fibrosis
}
CLASS_P = np.array([CLASSES[c][0] for c in range(14)], dtype=float) / sum(v[0] for v in CLASSES.values())

MEAN_EXTRA_LESIONS = 0.9  # an abnormal image has 1 + Poisson(this) latent lesions


@dataclass(frozen=True)
class Habit:
    """How a kind of reader draws the lesions of an abnormal image (docs/competition.md, The synthetic data)."""

    miss: float  # chance of leaving out each latent lesion (every reader of an abnormal image still draws one)
    spurious: float  # mean number of extra boxes (Poisson) where no lesion is painted, each placed like a lesion
    jitter: float  # sd of the log of each box side and of the centre's shift, as a fraction of the box side
    area: tuple  # per class 0..13: median box area as a fraction of the lesion's box (the sides scale by its root)


# The prolific readers' box area relative to the careful readers', per class: the real data's ratios
# (docs/competition.md, Readers) where recorded; Atelectasis (larger there) 1.3 and the four classes not
# recorded (Consolidation, Infiltration, Pneumothorax, Pulmonary fibrosis) 0.5 are choices of this project.
PROLIFIC_AREA = (0.36, 1.3, 0.5, 0.48, 0.5, 1.0, 0.5, 1.0, 0.13, 0.35, 0.29, 0.33, 0.5, 0.5)
PROLIFIC = ("R8", "R9", "R10")
CAREFUL_HABIT = Habit(miss=0.10, spurious=0.05, jitter=0.04, area=(1.0,) * 14)
PROLIFIC_HABIT = Habit(miss=0.20, spurious=0.6, jitter=0.10, area=PROLIFIC_AREA)
HABITS = {r: PROLIFIC_HABIT if r in PROLIFIC else CAREFUL_HABIT for r in READERS}


# --------------------------------------------------------------------------- drawing helpers


def _soft(t, edge):
    """0 where t <= 0, 1 where t >= edge, smooth in between: a soft inside test."""
    s = np.clip(np.asarray(t, dtype=np.float32) / edge, 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _noise(rng, shape, cells) -> np.ndarray:
    """Smooth noise, unit standard deviation, with about `cells` blobs across the shorter side."""
    h, w = shape
    m = max(min(h, w), 1)
    small = rng.standard_normal((int(cells * h / m) + 3, int(cells * w / m) + 3)).astype(np.float32)
    n = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (n - n.mean()) / (n.std() + 1e-6)


def _segment(u, v, p, q):
    """Distance of the points (u, v) to the segment p-q."""
    dx, dy = float(q[0] - p[0]), float(q[1] - p[1])
    t = np.clip(((u - p[0]) * dx + (v - p[1]) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(u - p[0] - t * dx, v - p[1] - t * dy)


def _lungs(rng, u, v, mid):
    """Lung fields (0..1) and the density their air takes away: rounded apex, convex lateral border,
    diaphragm dome and lateral costophrenic angle, brighter hila, fine vascular texture."""
    lungs, air = np.zeros((v.size, u.size), np.float32), np.zeros((v.size, u.size), np.float32)
    for side in (-1, 1):
        cx, hw = mid + side * (0.18 + rng.normal(0, 0.01)), (0.15 if side < 0 else 0.14) + rng.normal(0, 0.01)
        top, base = 0.14 + rng.normal(0, 0.012), 0.745 + 0.015 * (side > 0) + rng.normal(0, 0.012)
        dome = base - 0.075 + rng.normal(0, 0.008)
        lat = side * (u - cx) / (hw * (0.8 + 0.2 * _soft(v - top, 0.35)))
        diaphragm = dome + (base - dome) * np.clip((lat + 0.4) / 1.4, 0, 1) ** 2
        lung = _soft(np.minimum(np.minimum((1 - np.abs(lat)) * hw, v - top - 0.15 * (lat + 0.3) ** 2),
                                diaphragm - v), 0.02)
        hilum = np.exp(-(((u - mid - side * 0.09) / 0.05) ** 2 + ((v - 0.43) / 0.08) ** 2))
        lungs += lung
        air += lung * (0.26 + rng.normal(0, 0.02) - 0.10 * hilum - 0.02 * _noise(rng, lung.shape, 40))
    return lungs, air


def _bones(rng, u, v, mid, half, torso, lungs):
    """Density of ribs (posterior ones arching from the spine and drooping laterally, anterior ones
    fainter), vertebrae, clavicles and the humeri at the upper corners."""
    s = np.abs(u - mid)
    ribs = torso * _soft(s - 0.03, 0.02) * _soft(v - 0.06, 0.03) * _soft(0.76 - v, 0.06) * (0.4 + 0.6 * lungs)
    bones = np.zeros_like(lungs)
    for amp, curve, spacing in ((0.065, -0.25 * s + 1.6 * s**2, 0.055), (0.03, -0.35 * s + 0.2, 0.075)):
        phase = (v - curve) / (spacing * (1 + 0.2 * v)) + rng.random()
        bones += amp * ribs * np.clip(2.5 * (np.cos(2 * np.pi * phase) - 0.3), 0, 1)
    spine = _soft(0.032 - s, 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * v / 0.05 + rng.random() * 6))
    bones += 0.05 * spine * torso
    for side in (-1, 1):
        p, q = (mid + side * 0.04, 0.19 + rng.normal(0, 0.01)), (mid + side * 0.3, 0.12 + rng.normal(0, 0.015))
        bones += 0.09 * _soft(0.012 - _segment(u, v, p, q), 0.008)
        x = mid + side * (half + 0.04 + rng.normal(0, 0.01))
        humerus = np.maximum(_soft(0.07 - np.hypot(u - x, v - 0.12), 0.03),
                             _soft(0.045 - _segment(u, v, (x, 0.15), (x + side * 0.06, 0.55)), 0.03))
        bones = np.maximum(bones, 0.45 * humerus)
    return bones


def _anatomy(rng, h, w) -> tuple[np.ndarray, np.ndarray]:
    """Density (bone bright, about 0..1) of a posteroanterior chest, h x w, and the density that the air
    of the lungs takes away there (what an effusion or an enlarged heart fills in)."""
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    mid, half = 0.5 + rng.normal(0, 0.01), 0.43 + rng.normal(0, 0.02)  # midline, torso half-width
    torso = _soft(half * (0.3 + 0.7 * _soft(v - 0.02, 0.16) - 0.08 * _soft(v - 0.6, 0.4)) - np.abs(u - mid), 0.04)
    arms = _soft(half + 0.1 - np.abs(u - mid), 0.04) * _soft(0.6 - v, 0.25) * (1 - torso)
    tissue = 0.30 + 0.16 * np.clip(1 - ((u - mid) / half) ** 2, 0, 1) + rng.normal(0, 0.03)
    lungs, air = _lungs(rng, u, v, mid)
    # mediastinum, aortic knob and heart displace the air of the lungs they overlap
    medi = _soft(0.055 + 0.03 * v - np.abs(u - mid - 0.01), 0.02) * _soft(0.8 - v, 0.1)
    knob = _soft(1 - np.hypot((u - mid - 0.045) / 0.035, (v - 0.31) / 0.032), 0.5)
    heart = np.hypot((u - mid - 0.04 - rng.normal(0, 0.01)) / (0.135 + rng.normal(0, 0.01)),
                     (v - 0.575 - rng.normal(0, 0.01)) / (0.12 + rng.normal(0, 0.005)))
    solid = np.maximum(np.maximum(medi, knob), _soft(1 - heart, 0.25))
    air *= 1 - solid
    d = 0.04 + (tissue - 0.04 + 0.06 * solid) * torso + 0.2 * arms - air
    d += _bones(rng, u, v, mid, half, torso, lungs)
    d += rng.uniform(-0.06, 0.06) * (v - 0.5) + rng.uniform(-0.04, 0.04) * (u - 0.5)  # exposure gradient
    d += 0.02 * _noise(rng, (h, w), 5)
    return d.astype(np.float32), air


# --------------------------------------------------------------------------- lesion painters
# Each returns the density to add on a patch; (a, b) are coordinates normalised to the lesion box
# (-1..1 across it), `lat` = a pointing laterally, `base` the density there and `air` what the lungs'
# air takes away from it (fluid, tissue or an enlarged heart fill it in). Except for the heart, every
# painter is zero outside the box.


def _ellipse(a, b, edge=0.15):
    return _soft(1 - np.hypot(a, b), edge)


def _aortic(rng, a, b, lat, base, air):
    return _ellipse(a, b, 0.4) * (0.9 * air + 0.12)


def _atelectasis(rng, a, b, lat, base, air):
    t = rng.uniform(0.3, 0.6) * rng.choice([-1, 1])
    along, across = a * np.cos(t) + b * np.sin(t), -a * np.sin(t) + b * np.cos(t)
    band = _soft(0.32 - np.abs(across), 0.12) * _soft(0.95 - np.abs(along), 0.2)
    return 0.20 * band * _soft(1 - np.abs(a), 0.05) * _soft(1 - np.abs(b), 0.05)


def _calcification(rng, a, b, lat, base, air):
    dots, min_r = np.zeros_like(a), 2.0 / a.shape[1]  # at least about a pixel across
    for _ in range(rng.integers(2, 7)):
        x, y, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), max(rng.uniform(0.12, 0.25), min_r)
        dots = np.maximum(dots, _soft(r - np.hypot(a - x, b - y), 0.05))
    return 0.45 * dots


def _cardiomegaly(rng, a, b, lat, base, air):
    return _ellipse(a, b / 1.8, 0.25) * air


def _consolidation(rng, a, b, lat, base, air):
    patches = np.clip(0.75 + 0.5 * _noise(rng, a.shape, 4), 0, 1)
    return _ellipse(a, b, 0.3) * patches * (0.75 * air + 0.04)


def _ild(rng, a, b, lat, base, air):
    mesh = np.exp(-((_noise(rng, a.shape, 10) / 0.3) ** 2))
    return _ellipse(a, b, 0.3) * (0.05 + 0.11 * mesh)


def _infiltration(rng, a, b, lat, base, air):
    return 0.16 * _ellipse(a, b, 0.5) * np.clip(0.6 + 0.5 * _noise(rng, a.shape, 6), 0, 1)


def _opacity(rng, a, b, lat, base, air):
    return _ellipse(a, b, 0.6) * (0.16 + 0.02 * _noise(rng, a.shape, 3))


def _nodule(rng, a, b, lat, base, air):
    r = np.hypot(a, b)
    return 0.26 * _soft(0.95 - r, 0.1) * (1 - 0.2 * r * r)


def _other(rng, a, b, lat, base, air):
    theta, radius = np.arctan2(b, a), 0.72
    for k in (2, 3, 5):
        radius = radius + rng.uniform(0.05, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    blob = _soft(np.minimum(radius, 1.0) - np.hypot(a, b), 0.08)
    return 0.20 * blob * (0.85 + 0.15 * _noise(rng, a.shape, 5))


def _effusion(rng, a, b, lat, base, air):
    surface = -0.1 - 0.9 * ((lat + 1) / 2) ** 2  # meniscus: fluid climbs the lateral chest wall
    fluid = _soft(b - surface, 0.2) * _soft(1 - np.abs(a), 0.25) * _soft(1 - np.abs(b), 0.05)
    return fluid * np.clip(np.percentile(base, 95) - base, 0, None)  # as dense as the diaphragm below


def _thickening(rng, a, b, lat, base, air):
    cap = -0.45 + 0.8 * a * a  # apical cap following the lung apex
    band = _soft(0.4 - np.abs(b - cap), 0.2) * _soft(1 - np.abs(a), 0.15) * _soft(1 - np.abs(b), 0.05)
    return band * (0.8 * air + 0.05)


def _pneumothorax(rng, a, b, lat, base, air):
    edge = lat - (0.05 - 0.7 * b * b)  # > 0 lateral to the visceral pleural line
    box = _soft(1 - np.abs(a), 0.3) * _soft(1 - np.abs(b), 0.3)
    return box * (-0.13 * _soft(edge, 0.06) + 0.2 * np.exp(-((edge / 0.035) ** 2)))


def _fibrosis(rng, a, b, lat, base, air):
    h, w = a.shape
    streaks = cv2.resize(rng.standard_normal((3, 14)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    streaks = np.exp(-((streaks / (0.5 * streaks.std() + 1e-6)) ** 2))
    return _ellipse(a, b, 0.3) * (0.05 + 0.08 * streaks)


PAINTERS = (_aortic, _atelectasis, _calcification, _cardiomegaly, _consolidation, _ild, _infiltration,
            _opacity, _nodule, _other, _effusion, _thickening, _pneumothorax, _fibrosis)


def _paint(rng, d, air, class_id, box) -> None:
    """Paint lesion `class_id` into `d` at `box` (x_min, y_min, x_max, y_max in pixels of `d`)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    ey = 1.8 if class_id == 3 else 1.0  # the enlarged heart reaches above and below its widest band
    ys = slice(max(int(cy - hh * ey), 0), min(int(np.ceil(cy + hh * ey)) + 1, d.shape[0]))
    xs = slice(max(int(x0), 0), min(int(np.ceil(x1)) + 1, d.shape[1]))
    b = ((np.arange(ys.start, ys.stop, dtype=np.float32) + 0.5 - cy) / hh)[:, None]
    a = ((np.arange(xs.start, xs.stop, dtype=np.float32) + 0.5 - cx) / hw)[None, :]
    a, b = np.broadcast_arrays(a, b)
    lat = a if cx > d.shape[1] / 2 else -a
    d[ys, xs] += PAINTERS[class_id](rng, a, b, lat, d[ys, xs], air[ys, xs])


def render_image(rng: np.random.Generator, height: int, width: int, lesions=()) -> np.ndarray:
    """Density of a chest radiograph, float32 `height` x `width`, bone bright, about 0..1.

    `lesions` holds ``(class_id, x_min, y_min, x_max, y_max)`` boxes in pixels of the image. Anatomy,
    lesions and noise draw from separate children of `rng`, so one rng state rendered with and without
    lesions gives images that differ only where the lesions are painted.
    """
    anatomy_rng, lesion_rng, noise_rng = rng.spawn(3)
    f = min(1.0, RENDER_MAX / max(height, width))
    d, air = _anatomy(anatomy_rng, max(round(height * f), 8), max(round(width * f), 8))
    fy, fx = d.shape[0] / height, d.shape[1] / width
    for class_id, x0, y0, x1, y1 in lesions:
        _paint(lesion_rng, d, air, int(class_id), (x0 * fx, y0 * fy, x1 * fx, y1 * fy))
    if d.shape != (height, width):
        d = cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR)
    d += noise_rng.uniform(0.006, 0.015) * noise_rng.standard_normal(d.shape, dtype=np.float32)
    return d


# --------------------------------------------------------------------------- labels


def sample_lesion(rng, class_id: int, height: int, width: int) -> tuple:
    """A latent lesion ``(class_id, x_min, y_min, x_max, y_max)`` placed and sized after docs/competition.md (Classes and boxes)."""
    _, w, h, cx, cy, size_sigma, pos_sd, lung = CLASSES[class_id]
    cx, cy = cx / REF_W + rng.normal(0, pos_sd), cy / REF_H + rng.normal(0, pos_sd * 1.2)
    if lung:
        cx, cy = np.clip(cx, 0.2, 0.45), np.clip(cy, 0.2, 0.7)
        cx = 1 - cx if rng.random() < 0.4 else cx
    scale = np.exp(rng.normal(0, size_sigma))
    bw, bh = w / REF_W * scale * np.exp(rng.normal(0, 0.1)), h / REF_H * scale * np.exp(rng.normal(0, 0.1))
    x0, x1 = np.clip([cx - bw / 2, cx + bw / 2], 0.01, 0.99) * width
    y0, y1 = np.clip([cy - bh / 2, cy + bh / 2], 0.01, 0.99) * height
    return class_id, float(x0), float(y0), float(max(x1, x0 + 2)), float(max(y1, y0 + 2))


def latent_lesions(rng, height, width) -> list[tuple]:
    """The lesions of an abnormal image: 1 + Poisson(MEAN_EXTRA_LESIONS), at most one heart and one aorta."""
    classes = rng.choice(14, size=1 + rng.poisson(MEAN_EXTRA_LESIONS), p=CLASS_P)
    classes = [c for k, c in enumerate(classes) if c not in (0, 3) or c not in classes[:k]]  # one heart, one aorta
    return [sample_lesion(rng, int(c), height, width) for c in classes]


def _reader_box(rng, habit: Habit, lesion, height, width) -> dict:
    class_id, x0, y0, x1, y1 = lesion
    side, jitter = np.sqrt(habit.area[class_id]), habit.jitter
    w, h = (x1 - x0) * side * np.exp(rng.normal(0, jitter)), (y1 - y0) * side * np.exp(rng.normal(0, jitter))
    cx, cy = (x0 + x1) / 2 + rng.normal(0, jitter) * w, (y0 + y1) / 2 + rng.normal(0, jitter) * h
    x0, x1 = (float(t) for t in np.clip([cx - w / 2, cx + w / 2], 0, width - 1).round(1))
    y0, y1 = (float(t) for t in np.clip([cy - h / 2, cy + h / 2], 0, height - 1).round(1))
    x1, y1 = max(x1, round(x0 + 1, 1)), max(y1, round(y0 + 1, 1))  # no zero-size boxes, even at the border
    return {"class_name": CLASS_NAMES[class_id], "class_id": class_id,
            "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}


def reader_rows(rng, lesions, height, width) -> list[dict]:
    """train.csv rows of three distinct readers (drawn with READER_P) for one image, no image_id yet: "No finding"
    on a normal image; on an abnormal one the latent `lesions` each reader sees, plus spurious boxes, drawn after
    the reader's habit (HABITS). Every reader of an abnormal image draws at least one of its lesions."""
    rows = []
    for reader in rng.choice(READERS, size=3, replace=False, p=READER_P):
        reader = str(reader)
        if not lesions:
            rows.append({"rad_id": reader, "class_name": CLASS_NAMES[NO_FINDING], "class_id": NO_FINDING})
            continue
        habit = HABITS[reader]
        seen = [les for les in lesions if rng.random() >= habit.miss] or [lesions[rng.integers(len(lesions))]]
        seen += [sample_lesion(rng, int(rng.choice(14, p=CLASS_P)), height, width)
                 for _ in range(rng.poisson(habit.spurious))]
        rows += [{"rad_id": reader, **_reader_box(rng, habit, les, height, width)} for les in seen]
    return rows


def truth_rows(lesions) -> list[dict]:
    """The private truth of one test image (LABEL_COLUMNS, no image_id yet): its latent lesions, rounded to 0.1 px
    like train.csv, each with score 1 and TRUTH_READERS readers; a normal image one class-14 row with an empty box."""
    if not lesions:
        return [{"class_id": NO_FINDING, "score": 1.0, "n_readers": TRUTH_READERS}]
    return [{"class_id": int(c), **{k: round(float(t), 1) for k, t in zip(BOX, box)}, "score": 1.0,
             "n_readers": TRUTH_READERS} for c, *box in lesions]


# --------------------------------------------------------------------------- DICOM


def _dicom(rng, density, image_id, compressed) -> Dataset:
    """A DICOM Part 10 dataset holding `density` with randomised but valid pixel encoding and tags."""
    photometric = "MONOCHROME1" if rng.random() < 0.4 else "MONOCHROME2"
    bits = int(rng.choice([12, 14, 15, 16], p=[0.35, 0.25, 0.15, 0.25]))
    top = 2**bits - 1
    lo, hi = rng.uniform(0.0, 0.08) * top, rng.uniform(0.7, 0.98) * top
    stored = lo + np.clip(density, 0, 1.15) * ((hi - lo) / 1.15)
    stored = np.rint(top - stored if photometric == "MONOCHROME1" else stored).astype(np.uint16)
    slope, intercept = [(None, None), (1, -1024), (2, 0)][rng.choice(3, p=[0.5, 0.25, 0.25])]
    cr = rng.random() < 0.4

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if cr else "1.2.840.10008.5.1.4.1.1.1.1"  # CR / Digital X-Ray
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[image_id, "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[image_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[image_id, "series"])
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    date = datetime.date(2018, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 3 * 365)))
    ds.StudyDate = ds.SeriesDate = date.strftime("%Y%m%d")
    ds.Modality = "CR" if cr else "DX"
    ds.PatientID, ds.PatientName, ds.BodyPartExamined, ds.ViewPosition = "", "", "CHEST", "PA"
    ds.PatientSex = str(rng.choice(["M", "F", "O"], p=[0.5, 0.45, 0.05]))
    ds.PatientAge, ds.SeriesNumber, ds.InstanceNumber = f"{rng.integers(18, 90):03d}Y", 1, 1
    if rng.random() < 0.85:
        spacing = round(0.14 * REF_H / density.shape[0], 4)
        ds.PixelSpacing = [spacing, spacing]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if rng.random() < 0.5:  # VOI window over the body's intensity range, in modality units
        p_lo, p_hi = np.percentile(stored[::4, ::4], [1, 99.5])
        m_lo, m_hi = sorted((slope or 1) * np.array([p_lo, p_hi]) + (intercept or 0))
        ds.WindowCenter, ds.WindowWidth = int(round((m_lo + m_hi) / 2)), max(int(round((m_hi - m_lo) * 1.1)), 2)
    ds.set_pixel_data(stored, photometric, bits, generate_instance_uid=False)
    if compressed:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds


def _image(seed: int, split_index: int, index: int) -> tuple[np.random.Generator, str]:
    """An image's own generator and its id, the generator's first draw."""
    rng = np.random.default_rng([seed, split_index, index])
    return rng, rng.bytes(16).hex()


def _make_one(job) -> dict:
    """Write one image; return its id, its train.csv rows (train) or its truth rows (test) and what it holds."""
    out, split_index, index, seed, size, abnormal_fraction, compressed_fraction = job
    rng, image_id = _image(seed, split_index, index)
    height = int(round(size * rng.uniform(0.8, 1.2)))
    width = int(round(height * rng.uniform(0.8, 1.05)))
    width = width - 1 if width == height else width  # never square
    lesions = latent_lesions(rng, height, width) if rng.random() < abnormal_fraction else []
    compressed = bool(rng.random() < compressed_fraction)
    render_rng, reader_rng = rng.spawn(2)
    train = SPLITS[split_index] == "train"
    rows = reader_rows(reader_rng, lesions, height, width) if train else truth_rows(lesions)
    density = render_image(render_rng, height, width, lesions)
    ds = _dicom(rng, density, image_id, compressed)
    path = Path(out) / SPLITS[split_index] / f"{image_id}.dicom"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return {"image_id": image_id, "rows": [{"image_id": image_id, **r} for r in rows],
            "boxes": sum(r["class_id"] != NO_FINDING for r in rows), "compressed": compressed}


@dataclass(frozen=True)
class SynthResult:
    """What `vinbig synth` wrote into `out`: image counts, reader boxes (train), truth boxes (test), JPEG 2000 files."""

    out: Path
    train: int
    test: int
    boxes: int
    compressed: int
    truth_boxes: int = 0

    def __str__(self) -> str:
        return (f"train {self.train}, test {self.test}, boxes {self.boxes}, test truth boxes {self.truth_boxes}, "
                f"compressed {self.compressed}")

    @property
    def truth(self) -> Path:
        """The test images' truth, for `vinbig score` only."""
        return self.out / PRIVATE_TRUTH


def make_dataset(out, *, n_train: int = 60, n_test: int = 20, seed: int = 0, size: int = 512,
                 abnormal_fraction: float = 0.3, compressed_fraction: float = 0.25, workers: int = 0) -> SynthResult:
    """Write the synthetic dataset to `out` (see the module docstring)."""
    if n_train < 0 or n_test < 0 or size < 64 or workers < 0:  # JPEG 2000 needs 32+ px per side
        raise ConfigError(f"synth needs n_train, n_test >= 0, size >= 64 and workers >= 0 "
                          f"(got {n_train}, {n_test}, {size}, {workers}); fix synth.* or the options")
    if not (0 <= abnormal_fraction <= 1 and 0 <= compressed_fraction <= 1):
        raise ConfigError(f"synth.abnormal_fraction and synth.compressed_fraction must lie in [0, 1] "
                          f"(got {abnormal_fraction}, {compressed_fraction})")
    out = Path(out)
    manifest = claim(out)
    counts = (n_train, n_test)
    dicoms = {split: [out / split / f"{_image(int(seed), s, i)[1]}.dicom" for i in range(counts[s])]
              for s, split in enumerate(SPLITS)}
    tables = [out / "train.csv", out / "sample_submission.csv", out / PRIVATE_TRUTH]
    manifest.own([*tables, *dicoms["train"], *dicoms["test"]], "--out of 'vinbig synth'")  # every file before the first is written
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    (out / PRIVATE_TRUTH).parent.mkdir(exist_ok=True)
    jobs = [(str(out), s, i, int(seed), int(size), float(abnormal_fraction), float(compressed_fraction))
            for s, n in enumerate(counts) for i in range(n)]
    logger.info("writing %d train and %d test images of height about %d to %s with %d process(es)",
                n_train, n_test, size, out, n_workers(workers, len(jobs)))
    with process_map(_make_one, jobs, workers) as (results, _):
        results = list(progress(results, total=len(jobs), desc="synth", unit="img"))

    train, test = results[:n_train], results[n_train:]
    rows = pd.DataFrame([r for res in train for r in res["rows"]], columns=list(TRAIN_COLUMNS))
    write_csv(rows, tables[0], TRAIN_COLUMNS)
    sub = pd.DataFrame({"image_id": [r["image_id"] for r in test], "PredictionString": NO_FINDING_PREDICTION})
    write_csv(sub, tables[1], SUBMISSION_COLUMNS)
    truth = pd.DataFrame([r for res in test for r in res["rows"]], columns=list(LABEL_COLUMNS))
    truth = truth.astype({"class_id": np.int64, "n_readers": np.int64})
    write_csv(truth.sort_values(["image_id", "class_id", *BOX], kind="stable"), tables[2], LABEL_COLUMNS)
    for split in SPLITS:
        removed = manifest.remove_stale(dicoms[split], within=split)
        if removed:
            logger.info("removed %d .dicom file(s) of an earlier 'vinbig synth' from %s", len(removed), out / split)
        foreign = {p.stem for p in (out / split).glob("*.dicom")} - {p.stem for p in dicoms[split]}
        if foreign:
            logger.warning("%s holds %d .dicom file(s) that vinbig did not write, kept as they are: they are not in "
                           "train.csv or sample_submission.csv", out / split, len(foreign))
    return SynthResult(out, len(train), len(test), int(sum(r["boxes"] for r in train)),
                       int(sum(r["compressed"] for r in results)), int(sum(r["boxes"] for r in test)))


def claim(out: str | os.PathLike) -> Manifest:
    """`out` as a synthetic dataset folder: its manifest (made with the folder when missing or empty). A folder
    that holds files and no synth manifest (a real dataset, a work folder, a synthetic dataset of a vinbig before
    manifests) is refused with a UserError, and nothing is written."""
    out = Path(out)
    try:
        manifest = Manifest.claim(out, KIND, "--out of 'vinbig synth'")
    except UserError as e:
        if Manifest.read(out) is not None:
            raise
        what = "a dataset, whose train.csv synth never replaces" if (out / "train.csv").exists() else "not empty"
        raise UserError(f"{e} ({what}; a synthetic dataset of a vinbig before {MANIFEST} is refused too: delete it "
                        "and run 'vinbig synth' again)") from None
    for sub in (*SPLITS, PRIVATE_TRUTH.parent.name):
        folder = out / sub
        if folder.is_symlink() or folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a {'link' if folder.is_symlink() else 'file'}, where 'vinbig synth' keeps "
                            "a folder of its own; move it away or give another --out")
    return manifest
