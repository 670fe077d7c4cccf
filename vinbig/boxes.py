"""Box geometry between original DICOM pixels and the resized PNGs.

Boxes are ``(x_min, y_min, x_max, y_max)`` in pixel units, x along the columns (width) and y
along the rows (height). Width and height scale separately: a PNG of ``png_width x png_height``
made from a ``width x height`` image maps x by ``png_width / width`` and y by
``png_height / height``, which is exact whatever rounding chose the PNG size.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# --------------------------------------------------------------------------- a box and its image

EDGE_SLACK = 1e-3  # px: labels.csv is rounded to 1/1000 px, so an edge this far out is on the image
MIN_SIZE = 1.0  # px: a box narrower or lower than this, once clipped, is nothing a reader or a model can see
VERDICTS = ("inside", "edge", "beyond", "negative", "small")


@dataclass(frozen=True)
class Placement:
    """Where each of N boxes lies on its image (:func:`place_boxes`); the one rule for "a box beyond its image",
    shared by `vinbig folds` (train.csv against meta.csv) and the detector's datasets (labels.csv, readers.csv).

    Each box gets one verdict, the first that holds, and ``folds.outside_boxes`` (error, clip, drop) says what
    becomes of it:

    * ``negative``: a coordinate below ``-EDGE_SLACK``, not a pixel position: an error whatever the setting;
    * ``beyond``: an edge more than ``EDGE_SLACK`` beyond the width or height: an error (error); moved to the
      edge, and left out when less than ``MIN_SIZE`` of it is left (clip); left out (drop);
    * ``small``: under ``MIN_SIZE`` (1 px) wide or high: left out whatever the setting;
    * ``edge``: beyond by at most ``EDGE_SLACK``: moved onto the edge, whatever the setting;
    * ``inside``: within ``[0, width] x [0, height]``: kept as it is.

    The slack is 1/1000 px, for both: labels.csv and readers.csv are rounded to that, so a box on the edge
    stays on it after the round trip, and an edge that close to the image's is on it. A box without a size (NaN
    width or height: an image that meta.csv does not list) is checked for negative coordinates and size only; a
    row without a box (NaN coordinates, a "No finding" row) is "inside".
    """

    boxes: np.ndarray  # (N, 4): the boxes clipped to their image ("edge" and "beyond" moved onto it)
    negative: np.ndarray  # (N,) bool
    beyond: np.ndarray  # (N,) bool, not negative
    small: np.ndarray  # (N,) bool: under MIN_SIZE once clipped, not negative ("beyond" boxes too)
    edge: np.ndarray  # (N,) bool: within EDGE_SLACK outside, moved onto the edge

    @property
    def verdict(self) -> np.ndarray:
        """One of VERDICTS per box."""
        return np.select([self.negative, self.beyond, self.small, self.edge], ["negative", "beyond", "small", "edge"],
                         "inside")

    def error(self, outside_boxes: str) -> np.ndarray:
        """The boxes that are an error under `outside_boxes` (error, clip or drop)."""
        return self.negative | (self.beyond & (outside_boxes == "error"))

    def keep(self, outside_boxes: str) -> np.ndarray:
        """The boxes kept (as :attr:`boxes`) under `outside_boxes`; the others are errors or left out."""
        return ~self.negative & ~self.small & (~self.beyond | (outside_boxes == "clip"))


def place_boxes(boxes, width, height) -> Placement:
    """The :class:`Placement` of `boxes` (N x 4, original pixels) on images of `width` x `height` (per box)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.broadcast_to(np.asarray(width, dtype=np.float64), len(b))
    h = np.broadcast_to(np.asarray(height, dtype=np.float64), len(b))
    hi = np.stack([w, h, w, h], axis=1)
    with np.errstate(invalid="ignore"):  # NaN: no box, or no size
        negative = (b < -EDGE_SLACK).any(axis=1)
        beyond = (b > hi + EDGE_SLACK).any(axis=1) & ~negative
        clipped = np.clip(b, 0.0, np.where(np.isnan(hi), np.inf, hi))
        moved = ((clipped != b) & ~np.isnan(b)).any(axis=1)
        small = ((clipped[:, 2] - clipped[:, 0] < MIN_SIZE) | (clipped[:, 3] - clipped[:, 1] < MIN_SIZE)) & ~negative
    return Placement(clipped, negative, beyond, small, moved & ~negative & ~beyond & ~small)
