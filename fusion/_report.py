"""`vinbig report`: pictures of the fused out-of-fold predictions in WORK/report/.

* ``index.html``: a page to open in a browser (fusion._html): the AP table, PR curves and an error browser of
  every image's TP / FP / FN boxes, with thumbnails in ``images/``;
* ``per_class_ap.png``: AP per class and the mean (matplotlib, Agg backend);
* ``pr_curves.png``: precision/recall curve of each class, with its interpolated envelope;
* ``metrics.csv``: the per-class table;
* ``overlays/<class>_<image>.png``: true boxes (solid) and predicted boxes (dashed, with scores)
  on the PNGs of a few images per class, boxes scaled original -> PNG with meta.csv's sizes.

The folder carries a manifest of kind ``report`` (vinbig.manifest): a rerun removes only the stale overlays and
thumbnails it lists, never a file that a user or another command put there, and refuses a folder that is not a
report of its own (``--overwrite`` writes into such a folder, removing nothing; never into another command's output).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from vinbig.artifacts import (BOX, CLASS_NAMES, NO_FINDING, ArtifactError, Work, atomic_path, png_path, read_meta,
                              write_csv, writing)
from vinbig.boxes import to_png
from vinbig.errors import UserError
from vinbig.manifest import MANIFEST, Manifest
from vinbig.metric import Result

logger = logging.getLogger(__name__)
_MIN_CANVAS = 768  # overlays of smaller PNGs are enlarged so that the labels stay readable
KIND = "report"  # the manifest kind of a report folder
OVERLAYS = "overlays"


# one colour per class, far apart in hue (Trubetskoy's "20 distinct colours"), RGB
_RGB = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
        (170, 110, 40), (128, 0, 0), (128, 128, 128))


def class_colours() -> list[tuple[int, int, int]]:
    """One distinct BGR colour per class (OpenCV order; reverse it for matplotlib)."""
    return [rgb[::-1] for rgb in _RGB]


def plot_ap(result: Result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.table()
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    y = np.arange(len(table))[::-1]
    colours = [tuple(c / 255 for c in bgr[::-1]) for bgr in class_colours()]
    ap = np.nan_to_num(table["ap"].to_numpy())
    ax.barh(y, ap, color=colours)
    for yi, r in zip(y, table.itertuples()):
        text = f"{r.ap:.3f}  ({r.n_truth} boxes)" if r.present else "absent from the truth"
        ax.text(min(np.nan_to_num(r.ap) + 0.01, 0.75), yi, text, va="center", fontsize=8)
    ax.set_yticks(y, [f"{i} {n}" for i, n in enumerate(CLASS_NAMES)], fontsize=9)
    ax.axvline(result.mean_ap, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision at IoU > 0.4")
    ax.set_title(f"Out-of-fold AP per class; mAP {result.mean_ap:.4f} (dashed)")
    fig.tight_layout()
    _write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def plot_pr(result: Result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 5, figsize=(16, 10), dpi=90, sharex=True, sharey=True)
    for c, ax in enumerate(axes.flat):
        ax.set_title(f"{c} {CLASS_NAMES[c]}", fontsize=9)
        if c not in result.curves:
            ax.text(0.5, 0.5, "absent" if not result.present[c] else "no predictions", ha="center",
                    transform=ax.transAxes)
            continue
        precision, recall = result.curves[c]
        if len(recall):
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            ax.plot(recall, precision, linewidth=0.8, color="tab:blue", label="precision")
            ax.step(recall, envelope, where="post", linewidth=1.2, color="tab:orange", label="envelope")
        ax.text(0.97, 0.95, f"AP {result.ap[c]:.3f}", ha="right", va="top", transform=ax.transAxes, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    drawn = [ax for ax in axes.flat if ax.get_legend_handles_labels()[0]]
    if drawn:
        drawn[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Out-of-fold precision/recall per class (IoU > 0.4), mAP {result.mean_ap:.4f}")
    fig.tight_layout()
    _write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _label(img, text: str, x: int, y: int, colour, scale: float) -> None:
    """Text on a filled box of the box's colour, inside the image."""
    import cv2

    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x = int(np.clip(x, 0, max(0, img.shape[1] - w - 2)))
    y = int(np.clip(y, h + base + 2, img.shape[0] - 1))
    cv2.rectangle(img, (x, y - h - base - 2), (x + w + 2, y), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, y - base), font, scale, ink, thick, cv2.LINE_AA)


def _dashed_rect(img, p1, p2, colour, thickness: int, dash: int = 10) -> None:
    import cv2

    (x1, y1), (x2, y2) = p1, p2
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])))
        for s in range(0, length, 2 * dash):
            t0, t1 = s / max(length, 1), min(s + dash, length) / max(length, 1)
            q0 = (int(a[0] + (b[0] - a[0]) * t0), int(a[1] + (b[1] - a[1]) * t0))
            q1 = (int(a[0] + (b[0] - a[0]) * t1), int(a[1] + (b[1] - a[1]) * t1))
            cv2.line(img, q0, q1, colour, thickness, cv2.LINE_AA)


def draw_overlay(png: Path, meta_row, truth: pd.DataFrame, preds: pd.DataFrame, out: Path, title: str,
                 score_thr: float, max_preds: int = 15) -> Path:
    """True (solid) and predicted (dashed, score >= score_thr) boxes of one image on its PNG."""
    import cv2

    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read {png}")
    zoom = max(1.0, _MIN_CANVAS / max(image.shape))
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
        _label(canvas, f"{c} {CLASS_NAMES[c]}", x1, y1 - 2, colours[c], 0.8 * scale + 0.2)
    for (x1, y1, x2, y2), c, s in zip(to_canvas(preds), preds.class_id, preds.score):
        _label(canvas, f"{c} {CLASS_NAMES[c]} {s:.2f}", x1 + 3, y2 - 3, colours[c], 0.65 * scale + 0.15)
    head = f"{title}   solid: truth   dashed: prediction (score >= {score_thr:g})"
    _label(canvas, head, 0, canvas.shape[0], (40, 40, 40), 0.6 * scale + 0.2)
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise ArtifactError(f"cannot encode the overlay {out} as PNG")
    _write(out, lambda tmp: tmp.write_bytes(buf.tobytes()))
    return out


def file_name_safe(image_id: str) -> bool:
    """An image id that names a file inside a folder (meta.csv's ids are DICOM file names; a crafted one with a
    separator or '..' gets no picture, so that nothing is written outside the report)."""
    return image_id not in ("", ".", "..") and "/" not in image_id and "\\" not in image_id


def _write(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path`: never a half-written file; a failed write names the file."""
    with writing(path, "free space on its disk or give another --out, then run 'vinbig report' again"), \
            atomic_path(path) as tmp:
        write(tmp)


class Report(NamedTuple):
    """The report folder and the files written into it."""

    out: Path
    files: list[Path]


def claim_report(out: str | os.PathLike, overwrite: bool = False) -> Manifest:
    """`out` as a report folder (made if missing): its manifest. Refused with a UserError when it holds files and is
    not a report of vinbig's, unless `overwrite` (then nothing there is removed); always refused when it holds
    another command's output (`vinbig predict`, an export), whose manifest a report must not take over."""
    out = Path(out)
    found = Manifest.read(out) if out.is_dir() else None
    try:
        manifest = Manifest.claim(out, KIND, "report folder", overwrite)
    except UserError as e:
        if found is None and any((out / name).exists() for name in ("index.html", "metrics.csv")):
            raise UserError(f"{e} (a report of a vinbig before {MANIFEST}: rerun once with --overwrite, which "
                            "replaces its files and removes nothing, or remove the folder)") from None
        raise
    for sub in (OVERLAYS, "images"):
        folder = out / sub
        if folder.is_symlink() or folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a {'link' if folder.is_symlink() else 'file'}, where 'vinbig report' keeps "
                            "a folder of its own; move it away or give another --out")
    return manifest


def write_report(work: Work | str | os.PathLike, result: Result, preds: pd.DataFrame, truth: pd.DataFrame,
                 out: Path | None = None, per_class: int = 2, score_thr: float = 0.3, *,
                 runs: Mapping[str, Result] | None = None, p_abnormal: pd.Series | None = None,
                 low: float | None = None, high: float | None = None, readers: pd.DataFrame | None = None,
                 max_images: int = 1000, overwrite: bool = False) -> Report:
    """All pictures and the metric table of the out-of-fold predictions into `out` (default WORK/report), and the
    page index.html (fusion._html): the AP table (a column per run of `runs` when there are several), the PR curves
    and the error browser, with the gate's `p_abnormal` (by image id), `low` and `high` and the readers' boxes
    (`readers`, default WORK/readers.csv when it exists).

    `out` must be missing, empty or an earlier report (see :func:`claim_report`; `overwrite`: write into another
    folder, replacing same-named files and removing nothing); a rerun removes the overlays and thumbnails of the
    earlier report that it does not write again, and only those."""
    from fusion._html import page_data, page_files, read_optional_readers, write_page  # fusion._html imports us

    work = Work.of(work)
    out = Path(out or work.report)
    manifest = claim_report(out, overwrite)
    image_dir = work.images("train")
    meta = read_meta(image_dir).set_index("image_id")
    if readers is None:
        readers = read_optional_readers(work)
    overlays = []  # (path, image_id, class)
    for c in range(NO_FINDING):
        ids = sorted(truth.loc[truth.class_id == c, "image_id"].unique())
        ids = [i for i in ids if i in meta.index and file_name_safe(i) and png_path(image_dir, i).is_file()][:per_class]
        slug = re.sub(r"[^a-z0-9]+", "_", CLASS_NAMES[c].lower()).strip("_")
        overlays += [(out / OVERLAYS / f"{c:02d}_{slug}_{image_id}.png", image_id, c) for image_id in ids]
    data = page_data(result, preds, truth, meta, runs=runs, p_abnormal=p_abnormal, low=low, high=high,
                     readers=readers, score_thr=score_thr, max_images=max_images)
    fixed = [out / "metrics.csv", out / "per_class_ap.png", out / "pr_curves.png"]
    manifest.own(fixed + [p for p, _, _ in overlays] + page_files(out, data, meta), "report folder",
                 overwrite)  # before writing

    written = [write_csv(result.table(), fixed[0], list(result.table().columns)), plot_ap(result, fixed[1]),
               plot_pr(result, fixed[2])]
    (out / OVERLAYS).mkdir(exist_ok=True)
    t_by, p_by = dict(tuple(truth.groupby("image_id"))), dict(tuple(preds.groupby("image_id")))
    empty = preds.iloc[:0]
    for path, image_id, c in overlays:
        written.append(draw_overlay(png_path(image_dir, image_id), meta.loc[image_id], t_by[image_id],
                                    p_by.get(image_id, empty), path, f"{image_id[:12]} ({CLASS_NAMES[c]})",
                                    score_thr))
    manifest.remove_stale([p for p, _, _ in overlays], within=OVERLAYS)
    written += write_page(out, data, image_dir, meta, manifest)
    logger.info("report in %s: %d files (%d overlays); open %s in a browser", out, len(written), len(overlays),
                out / "index.html")
    return Report(out, written)
