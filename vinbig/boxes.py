"""Box geometry between original DICOM pixels and the resized PNGs.

Boxes are ``(x_min, y_min, x_max, y_max)`` in pixel units, x along the columns (width) and y
along the rows (height). Width and height scale separately: a PNG of ``png_width x png_height``
made from a ``width x height`` image maps x by ``png_width / width`` and y by
``png_height / height``, which is exact whatever rounding chose the PNG size.
"""

from __future__ import annotations

import numpy as np


def png_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The ``(png_width, png_height)`` that puts the long side at `long_side`, keeping the aspect ratio.

    Images smaller than `long_side` are not enlarged.
    """
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_boxes(boxes: np.ndarray, sx: float | np.ndarray, sy: float | np.ndarray) -> np.ndarray:
    """Multiply the x coordinates of `boxes` (N x 4) by `sx` and the y coordinates by `sy`."""
    boxes = np.asarray(boxes, dtype=np.float64)
    factor = np.stack([sx, sy, sx, sy], axis=-1) if np.ndim(sx) else np.array([sx, sy, sx, sy])
    return boxes * factor


def to_png(boxes, width, height, png_width, png_height) -> np.ndarray:
    """Original pixels -> PNG pixels (arguments broadcast, one row of meta.csv per box)."""
    return scale_boxes(boxes, np.divide(png_width, width), np.divide(png_height, height))


def to_original(boxes, width, height, png_width, png_height) -> np.ndarray:
    """PNG pixels -> original pixels; the inverse of :func:`to_png`."""
    return scale_boxes(boxes, np.divide(width, png_width), np.divide(height, png_height))


def clip(boxes, width, height) -> np.ndarray:
    """Clip boxes to ``[0, width] x [0, height]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    hi = np.stack([width, height, width, height], axis=-1) if np.ndim(width) else np.array(
        [width, height, width, height], dtype=np.float64)
    return np.clip(boxes, 0.0, hi)


def iou(a, b) -> np.ndarray:
    """IoU of boxes `a` (..., 4) and `b` (..., 4), broadcast: ``iou(a, b)`` row by row, ``iou(a[:, None], b[None])``
    every pair. 0 where the union is empty (degenerate boxes)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


# weighted boxes fusion (ensemble-boxes, and fusion._wbf's port of it): the fused box's score
WBF_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def check_wbf_args(section: str, iou_thr: float, skip_box_thr: float, conf_type: str) -> None:
    """Reject WBF values of the config `section` (folds, fusion) with the key and a valid example."""
    from vinbig.errors import ConfigError

    if not 0.0 <= float(iou_thr) < 1.0:
        raise ConfigError(f"{section}.iou_thr is {iou_thr}; use a value in [0, 1), e.g. 0.4")
    if not 0.0 <= float(skip_box_thr) <= 1.0:  # above 1 every box (reader boxes score 1) would be dropped
        raise ConfigError(f"{section}.skip_box_thr is {skip_box_thr}; use a value in [0, 1], e.g. 0")
    if conf_type not in WBF_CONF_TYPES:  # ensemble-boxes would call exit() on an unknown conf_type
        raise ConfigError(f"{section}.conf_type is {conf_type!r}; use one of {list(WBF_CONF_TYPES)}")

