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

from vinbig.artifacts import CLASS_NAMES, NO_FINDING, Work, png_path, read_meta, write_csv
from vinbig.errors import UserError
from vinbig.manifest import MANIFEST, Manifest
from vinbig.metric import Result

from fusion._html import _write, file_name_safe, page_data, page_files, read_optional_readers, write_page
from fusion._overlay import class_colours, draw_truth_and_predictions, encode_png

logger = logging.getLogger(__name__)
KIND = "report"  # the manifest kind of a report folder
OVERLAYS = "overlays"


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


def draw_overlay(png: Path, meta_row, truth: pd.DataFrame, preds: pd.DataFrame, out: Path, title: str,
                 score_thr: float, max_preds: int = 15) -> Path:
    """True (solid) and predicted (dashed, score >= score_thr) boxes of one image on its PNG (fusion._overlay)."""
    import cv2

    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read {png}")
    data = encode_png(draw_truth_and_predictions(image, meta_row, truth, preds, title, score_thr, max_preds), out)
    _write(out, lambda tmp: tmp.write_bytes(data))
    return out


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
