"""Boxes drawn on radiographs: the one module that draws them, for `vinbig report` and `vinbig predict`.

* :func:`draw_truth_and_predictions`: a report overlay, true boxes (solid) and predicted ones (dashed, with
  scores) on an image's PNG;
* :func:`draw_predictions`: a `vinbig predict` overlay, the final boxes with their class names and scores on the
  converted radiograph, and a caption;
* :func:`encode_png`: a canvas as PNG bytes (the caller writes them where its own fix applies).

Boxes come in original DICOM pixels and are scaled onto the image with its sizes (vinbig.boxes.to_png); an image
smaller than :data:`MIN_CANVAS` is enlarged so that the labels stay readable. One colour per class
(:func:`class_colours`).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, ArtifactError
from vinbig.boxes import to_png

MIN_CANVAS = 768  # overlays of smaller images are enlarged so that the labels stay readable

# one colour per class, far apart in hue (Trubetskoy's "20 distinct colours"), RGB
RGB = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
       (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
       (170, 110, 40), (128, 0, 0), (128, 128, 128))


def class_colours() -> list[tuple[int, int, int]]:
    """One distinct BGR colour per class (OpenCV order; reverse it for matplotlib)."""
    return [rgb[::-1] for rgb in RGB]


def label(img, text: str, x: int, y: int, colour, scale: float) -> None:
    """Text on a filled box of the box's colour, inside the image."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x = int(np.clip(x, 0, max(0, img.shape[1] - w - 2)))
    y = int(np.clip(y, h + base + 2, img.shape[0] - 1))
    cv2.rectangle(img, (x, y - h - base - 2), (x + w + 2, y), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, y - base), font, scale, ink, thick, cv2.LINE_AA)


def _dashed_rect(img, p1, p2, colour, thickness: int, dash: int = 10) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])))
        for s in range(0, length, 2 * dash):
            t0, t1 = s / max(length, 1), min(s + dash, length) / max(length, 1)
            q0 = (int(a[0] + (b[0] - a[0]) * t0), int(a[1] + (b[1] - a[1]) * t0))
            q1 = (int(a[0] + (b[0] - a[0]) * t1), int(a[1] + (b[1] - a[1]) * t1))
            cv2.line(img, q0, q1, colour, thickness, cv2.LINE_AA)


def draw_truth_and_predictions(image: np.ndarray, meta_row, truth: pd.DataFrame, preds: pd.DataFrame, title: str,
                               score_thr: float, max_preds: int = 15) -> np.ndarray:
    """True (solid) and predicted (dashed, score >= score_thr, at most `max_preds`) boxes of one image on its
    greyscale PNG `image` (`meta_row`: its meta.csv sizes), and a line with `title`."""
    zoom = max(1.0, MIN_CANVAS / max(image.shape))
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(image.shape) / 1400
    colours = class_colours()

    def to_canvas(df):
        b = to_png(df[list(BOX)].to_numpy(np.float64), meta_row.width, meta_row.height,
                   meta_row.png_width, meta_row.png_height) * zoom
        return np.rint(b).astype(int)

    truth = truth[truth.class_id != NO_FINDING]
    preds = preds[(preds.class_id != NO_FINDING) & (preds.score >= score_thr)].nlargest(max_preds, "score")
    for (x1, y1, x2, y2), c in zip(to_canvas(preds), preds.class_id):
        _dashed_rect(canvas, (x1, y1), (x2, y2), colours[c], max(2, round(3 * scale)))
    for (x1, y1, x2, y2), c in zip(to_canvas(truth), truth.class_id):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[c], max(3, round(5 * scale)), cv2.LINE_AA)
        label(canvas, f"{c} {CLASS_NAMES[c]}", x1, y1 - 2, colours[c], 0.8 * scale + 0.2)
    for (x1, y1, x2, y2), c, s in zip(to_canvas(preds), preds.class_id, preds.score):
        label(canvas, f"{c} {CLASS_NAMES[c]} {s:.2f}", x1 + 3, y2 - 3, colours[c], 0.65 * scale + 0.15)
    head = f"{title}   solid: truth   dashed: prediction (score >= {score_thr:g})"
    label(canvas, head, 0, canvas.shape[0], (40, 40, 40), 0.6 * scale + 0.2)
    return canvas


def drawn_boxes(boxes: pd.DataFrame, thr: float, most: int) -> pd.DataFrame:
    """The boxes an overlay (or a presentation state) shows: score >= `thr`, the first `most` (highest first)."""
    return boxes[boxes["score"] >= thr].head(most)


def draw_predictions(image: np.ndarray, width: int, height: int, boxes: pd.DataFrame, caption: str, thr: float,
                     most: int) -> np.ndarray:
    """The converted greyscale radiograph `image` of a `width` x `height` DICOM with the boxes (class_id, score,
    original pixels; highest score first) of score >= `thr` (at most `most`), each with its class name and score,
    and two lines: `caption`, then how many boxes are drawn."""
    zoom = max(1, math.ceil(MIN_CANVAS / max(image.shape)))  # a small image enlarged, each pixel a square
    h, w = image.shape
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(canvas.shape) / 1400
    colours = class_colours()
    shown = drawn_boxes(boxes, thr, most)
    xy = np.rint(to_png(shown[list(BOX)].to_numpy(np.float64), width, height, w, h) * zoom).astype(int)
    order = list(range(len(shown)))[::-1]  # the highest score drawn last, on top
    for i in order:
        x1, y1, x2, y2 = xy[i]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[int(shown["class_id"].iloc[i])], max(2, round(3 * scale)),
                      cv2.LINE_AA)
    for i in order:
        c, s = int(shown["class_id"].iloc[i]), float(shown["score"].iloc[i])
        label(canvas, f"{CLASS_NAMES[c]} {s:.2f}", xy[i][0], xy[i][1] - 2, colours[c], 0.65 * scale + 0.2)
    more = len(boxes) - len(shown)
    lines = [caption, f"{len(shown)} box(es) with score >= {thr:g}" + (f" ({more} lower not drawn)" if more else "")
             + " - vinbig, not for diagnostic use"]
    size = min(_fit(line, canvas.shape[1], 0.55 * scale + 0.2) for line in lines)
    step = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, size, max(1, round(size * 2)))[0][1] * 1.9
    for i, line in enumerate(lines):
        label(canvas, line, 0, round(canvas.shape[0] - (len(lines) - 1 - i) * step), (40, 40, 40), size)
    return canvas


def _fit(text: str, width: int, scale: float) -> float:
    """`scale`, or the smaller font scale at which `text` fits into `width` pixels (:func:`label`'s font)."""
    w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(scale * 2)))[0][0] + 4
    return scale if w <= width else scale * width / w


def encode_png(canvas: np.ndarray, out: Path, fast: bool = False) -> bytes:
    """`canvas` as the PNG file `out` will hold. `fast`: zlib level 1 over PNG's Up filter, which turns the repeated
    rows of an enlarged image into zeros (a third of the time and the size of OpenCV's default on the demo's
    images)."""
    params = []
    if fast:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.12 and later
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, buf = cv2.imencode(".png", canvas, params)
    if not ok:
        raise ArtifactError(f"cannot encode the overlay {out} as PNG")
    return buf.tobytes()
