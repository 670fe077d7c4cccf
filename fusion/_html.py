"""`vinbig report`'s page, WORK/report/index.html: where the model fails, at the competition's IoU > 0.4.

One self-contained file (styles, script and data inline; no server, no network: it opens from disk) and its
thumbnails in ``images/``:

* the per-class AP table of the ensemble (one more column per detector run when there are several) with the
  TP / FP / FN counts of the competition's matching (:func:`vinbig.metric.mark`, the matching `vinbig score`
  scores) and the precision/recall curves, drawn from the ranked TP flags embedded in the page;
* an out-of-fold error browser: each image's truth and predicted boxes on its PNG (downscaled), every predicted
  box TP or FP and every truth box found or missed (FN), filtered by class, kind and score, sorted by the
  highest-scored false positive, the most missed boxes or the confidence; the readers' own boxes
  (WORK/readers.csv) on demand; the image's P(abnormal) and what the "No finding" gate did with it.

Boxes are kept in original DICOM pixels in the page and scaled onto the thumbnails with meta.csv's sizes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from vinbig.artifacts import BOX, CLASS_NAMES, NO_FINDING, N_CLASSES, Work, atomic_path, png_path, read_readers, writing
from vinbig.errors import VinbigError
from vinbig.log import progress
from vinbig.manifest import Manifest
from vinbig.metric import IOU_THRESHOLD, Marks, Result, index_of, mark, prepare_truth

from fusion._gate import gate_decision as decide
from fusion._overlay import RGB

logger = logging.getLogger(__name__)

PAGE = "index.html"
IMAGES = "images"  # thumbnails beside the page


def file_name_safe(image_id: str) -> bool:
    """An image id that names a file inside a folder (meta.csv's ids are DICOM file names; a crafted one with a
    separator or '..' gets no picture, so that nothing is written outside the report)."""
    return image_id not in ("", ".", "..") and "/" not in image_id and "\\" not in image_id


def _write(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path` (a file of the report): never a half-written file; a failed write names
    the file."""
    with writing(path, "free space on its disk or give another --out, then run 'vinbig report' again"), \
            atomic_path(path) as tmp:
        write(tmp)


# --------------------------------------------------------------------------- the data behind the page


def ranked_runs(tp: np.ndarray) -> list[int]:
    """Ranked TP flags of one class as run lengths, false positives first: ``[FP, TP, FP, TP, ...]``."""
    tp = np.asarray(tp, dtype=bool)
    if not len(tp):
        return []
    edges = np.flatnonzero(np.diff(tp.astype(np.int8))) + 1
    lengths = np.diff(np.concatenate(([0], edges, [len(tp)]))).tolist()
    return ([0] if tp[0] else []) + lengths


def unrun(runs: list[int]) -> np.ndarray:
    """The ranked TP flags back from :func:`ranked_runs`."""
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).astype(bool)


def class_table(result: Result, marks: Marks, runs: Mapping[str, Result]) -> list[dict]:
    """Per class: AP (ensemble and runs), truth boxes, predictions, TP/FP/FN and the ranked TP flags."""
    m = marks.matches
    bounds = np.searchsorted(m.class_id, np.arange(N_CLASSES + 1))
    rows = []
    for c in range(N_CLASSES):
        tp = m.tp[bounds[c]:bounds[c + 1]]
        present = bool(result.present[c])
        rows.append({
            "id": c, "name": CLASS_NAMES[c], "present": present,
            "ap": float(result.ap[c]) if present else None,
            "runs": [float(r.ap[c]) if r.present[c] else None for r in runs.values()],
            "n_truth": int(m.n_truth[c]), "n_pred": int(len(tp)),
            "tp": int(tp.sum()), "fp": int(len(tp) - tp.sum()), "fn": int(m.n_truth[c] - tp.sum()),
            "ranked": ranked_runs(tp),
        })
    return rows


# the gate's decisions (fusion._gate.GATES) as the page's script names them (its GATE texts); the page shows what
# P(abnormal) decides, whatever the boxes
PAGE_GATES = {"normal": "nf", "unsure": "both", "abnormal": "boxes", "off": "none"}


def gate_decision(p: float | None, low: float | None, high: float | None) -> str | None:
    """What the gate did (:data:`PAGE_GATES`): 'nf' (p < low: 'No finding' only), 'both' (boxes plus 'No finding'
    1-p), 'boxes' (p >= high: boxes alone), 'none' (no P(abnormal): boxes alone); None when the gate was off."""
    if low is None or high is None:
        return None
    return PAGE_GATES[decide(p, True, low, high)]


def found_scores(marks: Marks, score: np.ndarray) -> np.ndarray:
    """Per truth box, the score of the detection that found it, -1 when none did: found at a threshold t when >= t."""
    out = np.full(len(marks.found_by), -1.0)
    out[marks.found] = score[marks.found_by[marks.found]]
    return out


def _by_image(image_ids, ids, mask: np.ndarray, key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a table where `mask` holds, grouped by their image's position in `image_ids` (rows of other images
    left out), within an image by `key` descending, then in table order; and each image's bounds in them."""
    pos = index_of(ids, image_ids)
    rows = np.flatnonzero(mask & (pos >= 0))
    keys = (rows,) if key is None else (rows, -key[rows])
    rows = rows[np.lexsort((*keys, pos[rows]))]
    return rows, np.searchsorted(pos[rows], np.arange(len(image_ids) + 1))


def _columns(*arrays, nd=None) -> list[list]:
    """Columns as Python lists (ints, or floats rounded to `nd` places) for JSON."""
    return [np.round(np.asarray(a, dtype=np.float64), nd).tolist() if nd is not None else np.asarray(a).tolist()
            for a in arrays]


def image_records(image_ids, meta: pd.DataFrame, preds: pd.DataFrame, truth: pd.DataFrame, marks: Marks,
                  readers: pd.DataFrame | None, p_abnormal: pd.Series | None, low, high, min_score: float,
                  max_boxes: int) -> list[dict]:
    """One record per image of `image_ids` (the truth's): boxes in original pixels, marked by the competition's
    matching (`marks` of `preds` against `truth`, both positionally indexed).

    ``preds``: [class, score, x1, y1, x2, y2, tp], highest score first (class 14 apart as ``nf``: [score, tp]);
    ``truth``: [class, x1, y1, x2, y2, score of the detection that found it or -1] (class 14 apart as ``nft``: that
    score); ``readers``: [reader, class, x1, y1, x2, y2]. Predictions below `min_score`, or beyond the `max_boxes`
    best of an image, are left out of the page (``hidden`` counts them) but not out of the counts of the table.
    ``p`` and ``gate``: P(abnormal) and the gate's decision (:func:`gate_decision`), None with the gate off.
    ``w``, ``h``: the image's size in original pixels (meta.csv's, else a frame around its boxes), which
    :func:`thumbnails` turns into the thumbnail's and leaves out of the page.
    """
    image_ids = [str(i) for i in image_ids]
    p_cls, t_cls = preds["class_id"].to_numpy(np.int64), truth["class_id"].to_numpy(np.int64)
    score = preds["score"].to_numpy(np.float64)
    found = found_scores(marks, score)
    (pc, ptp), (ps,), pb = _columns(p_cls, marks.tp.astype(np.int64)), _columns(score, nd=4), \
        _columns(*preds[list(BOX)].T.to_numpy(np.float64), nd=1)
    (tc,), (tf,), tb = _columns(t_cls), _columns(found, nd=4), _columns(*truth[list(BOX)].T.to_numpy(np.float64), nd=1)
    p_rows, p_at = _by_image(image_ids, preds["image_id"], marks.scored & (p_cls != NO_FINDING), score)
    nf_rows, nf_at = _by_image(image_ids, preds["image_id"], marks.scored & (p_cls == NO_FINDING), score)
    t_rows, t_at = _by_image(image_ids, truth["image_id"], t_cls != NO_FINDING)
    tn_rows, tn_at = _by_image(image_ids, truth["image_id"], t_cls == NO_FINDING)
    if readers is not None:
        ok = (readers["class_id"].to_numpy() != NO_FINDING) & readers[list(BOX)].notna().all(axis=1).to_numpy()
        rad = pd.factorize(readers["rad_id"], sort=True)[0]
        (rr, rc), rb = _columns(rad, readers["class_id"].to_numpy(np.int64)), \
            _columns(*readers[list(BOX)].T.to_numpy(np.float64), nd=1)
        r_rows, r_at = _by_image(image_ids, readers["image_id"], ok)
        r_images = set(readers["image_id"])
    pv = (np.full(len(image_ids), np.nan) if p_abnormal is None
          else p_abnormal.reindex(image_ids).to_numpy(np.float64))
    sizes = meta.reindex(image_ids)[["width", "height"]].to_numpy(np.float64)
    records = []
    for k, image_id in enumerate(image_ids):
        rows = p_rows[p_at[k]:p_at[k + 1]]
        shown = rows[score[rows] >= min_score][:max_boxes]
        nf, nft = nf_rows[nf_at[k]:nf_at[k + 1]], tn_rows[tn_at[k]:tn_at[k + 1]]
        p = None if np.isnan(pv[k]) else round(float(pv[k]), 4)
        rec = {
            "id": image_id,
            "preds": [[pc[i], ps[i], pb[0][i], pb[1][i], pb[2][i], pb[3][i], ptp[i]] for i in shown],
            "hidden": int(len(rows) - len(shown)),
            "truth": [[tc[i], tb[0][i], tb[1][i], tb[2][i], tb[3][i], tf[i]] for i in t_rows[t_at[k]:t_at[k + 1]]],
            "nf": [ps[nf[0]], int(marks.tp[nf].any())] if len(nf) else None,  # the highest, the one that can match
            "nft": tf[nft[0]] if len(nft) else None,
            "p": p,
            "gate": None if p_abnormal is None else gate_decision(p, low, high),
        }
        if readers is not None and image_id in r_images:
            rec["readers"] = [[rr[i], rc[i], rb[0][i], rb[1][i], rb[2][i], rb[3][i]]
                              for i in r_rows[r_at[k]:r_at[k + 1]]]
        w, h = sizes[k]
        if np.isnan(w):  # not in meta.csv: a frame around its boxes
            corners = [t[3:5] for t in rec["truth"]] + [q[4:6] for q in rec["preds"]]
            w, h = max([x for x, _ in corners], default=1), max([y for _, y in corners], default=1)
        rec.update(w=math.ceil(w), h=math.ceil(h))
        records.append(rec)
    return records


def wrongness(image_ids, preds: pd.DataFrame, truth: pd.DataFrame, marks: Marks, score_thr: float) -> np.ndarray:
    """Per image of `image_ids`, as an (n, 2) array: its mistakes at `score_thr` (missed truth boxes plus false
    positives) and its highest false-positive score (0 without one)."""
    score = preds["score"].to_numpy(np.float64)
    out = np.zeros((len(image_ids), 2))
    fp = marks.scored & ~marks.tp & (score >= score_thr)
    pos = index_of(preds["image_id"][fp], image_ids)
    np.add.at(out[:, 0], pos[pos >= 0], 1)
    np.maximum.at(out[:, 1], pos[pos >= 0], score[fp][pos >= 0])
    missed = found_scores(marks, score) < score_thr
    pos = index_of(truth["image_id"][missed], image_ids)
    np.add.at(out[:, 0], pos[pos >= 0], 1)
    return out


# --------------------------------------------------------------------------- thumbnails


def write_thumbnail(png: Path, out: Path, size: int, quality: int = 85) -> tuple[int, int] | None:
    """A JPEG of `png` whose longer side is at most `size`; its (width, height), None when the PNG is unreadable."""
    import cv2

    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    zoom = min(1.0, size / max(image.shape))
    if zoom < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * zoom)), max(1, round(image.shape[0] * zoom))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return None
    _write(out, lambda tmp: tmp.write_bytes(buf.tobytes()))
    return image.shape[1], image.shape[0]


def thumbnails(records: list[dict], image_dir: Path, meta: pd.DataFrame, folder: Path, size: int) -> list[Path]:
    """Thumbnails of the records' PNGs into `folder`; sets each record's ``img``, ``tw``, ``th`` and the scale
    ``sx``, ``sy`` (original pixels -> thumbnail pixels, through meta.csv's PNG size) in place of its ``w``, ``h``.
    Returns the thumbnails written (an unreadable PNG gets none)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in progress(records, desc="report thumbnails", unit="image"):
        image_id = rec["id"]
        w, h = rec.pop("w"), rec.pop("h")  # the JS reads the thumbnail's size and scale only
        out = folder / f"{image_id}.jpg"
        wh = None
        if image_id in meta.index and file_name_safe(image_id):
            wh = write_thumbnail(png_path(image_dir, image_id), out, size)
        if wh is None:
            rec.update(img=None, tw=w, th=h, sx=1.0, sy=1.0)
            continue
        row = meta.loc[image_id]
        # original -> PNG pixels (vinbig.boxes.to_png's factor, meta.csv's sizes) -> thumbnail pixels
        rec.update(img=f"{IMAGES}/{out.name}", tw=wh[0], th=wh[1],
                   sx=float(row.png_width / row.width * wh[0] / row.png_width),
                   sy=float(row.png_height / row.height * wh[1] / row.png_height))
        written.append(out)
    return written


# --------------------------------------------------------------------------- the page


def page_data(result: Result, preds: pd.DataFrame, truth: pd.DataFrame, meta: pd.DataFrame, *,
              runs: Mapping[str, Result] | None = None, p_abnormal: pd.Series | None = None,
              low: float | None = None, high: float | None = None, readers: pd.DataFrame | None = None,
              score_thr: float = 0.3, min_score: float = 0.01, max_boxes: int = 100, max_images: int = 1000) -> dict:
    """Everything the page shows, as JSON-ready values (thumbnails not yet written: records lack ``img``)."""
    runs = dict(runs or {}) if len(runs or {}) > 1 else {}  # one run is the ensemble: no column of its own
    truth = prepare_truth(truth)
    preds = preds.reset_index(drop=True)
    marks = mark(truth, preds)
    if p_abnormal is not None:
        p_abnormal = p_abnormal.copy()
        p_abnormal.index = p_abnormal.index.astype(str)
        p_abnormal = p_abnormal[~p_abnormal.index.duplicated(keep="last")]
    if readers is not None:
        readers = readers.assign(image_id=readers["image_id"].astype(str), rad_id=readers["rad_id"].astype(str))
    image_ids = np.asarray(marks.matches.image_ids).astype(str)
    n_images = len(image_ids)
    if n_images > max_images:  # the most wrong: most mistakes, then the highest-scored false positive
        w = wrongness(image_ids, preds, truth, marks, score_thr)
        image_ids = image_ids[np.sort(np.lexsort((-w[:, 1], -w[:, 0]))[:max_images])]
    records = image_records(image_ids, meta, preds, truth, marks, readers, p_abnormal, low, high, min_score,
                            max_boxes)
    gated = p_abnormal is not None and low is not None and high is not None
    return {
        "iou": IOU_THRESHOLD, "map": result.mean_ap, "classes": list(CLASS_NAMES),
        "colours": ["#%02x%02x%02x" % rgb for rgb in RGB],
        "table": class_table(result, marks, runs),
        "runs": [{"name": name, "map": r.mean_ap} for name, r in runs.items()],
        "gate": {"low": float(low), "high": float(high)} if gated else None,
        "readers": readers is not None and any("readers" in r for r in records),
        "score_thr": float(score_thr), "min_score": float(min_score), "max_boxes": int(max_boxes),
        "n_images": n_images, "n_preds": int(len(preds)), "ignored": int((~marks.scored).sum()),
        "images": records,
    }


def _embed(data: dict) -> str:
    """JSON for a ``<script type="application/json">`` element: every ``<`` (only ever inside a string) escaped, so
    that nothing in it can close the element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render(data: dict) -> str:
    """The page: the template with the data inline."""
    return _TEMPLATE.replace("/*DATA*/", _embed(data), 1)


def read_optional_readers(work: Work) -> pd.DataFrame | None:
    """WORK/readers.csv when it exists (None otherwise, or with a warning when it cannot be read)."""
    if not work.readers.is_file():
        return None
    try:
        return read_readers(work)
    except VinbigError as e:
        logger.warning("the page shows no readers' boxes: %s", e)
        return None


def page_files(out: Path, data: dict, meta: pd.DataFrame) -> list[Path]:
    """The files :func:`write_page` may write into the report folder `out` for `data`: the page and a thumbnail of
    each record with a meta.csv row."""
    return [out / PAGE, *(out / IMAGES / f"{r['id']}.jpg" for r in data["images"]
                          if r["id"] in meta.index and file_name_safe(r["id"]))]


def write_page(out: Path, data: dict, image_dir: Path, meta: pd.DataFrame, manifest: Manifest,
               thumb_size: int = 384) -> list[Path]:
    """``out/index.html`` of `data` (:func:`page_data`) and its thumbnails ``out/images/*.jpg`` of the PNGs in
    `image_dir`; the files written, the page first. `manifest` lists the report's files (fusion._report, which
    records :func:`page_files` before anything is written): the thumbnails of an earlier report that this one does
    not show are removed, and only those it lists."""
    written = thumbnails(data["images"], image_dir, meta, out / IMAGES, thumb_size)
    manifest.remove_stale(written, within=IMAGES)
    page = out / PAGE
    _write(page, lambda tmp: tmp.write_text(render(data), encoding="utf-8"))
    logger.info("error browser: %s (%d of %d images, %d thumbnails)", page, len(data["images"]), data["n_images"],
                len(written))
    return [page, *written]


# the page; "/*DATA*/" becomes the JSON of page_data
_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>vinbig report: out-of-fold errors</title>
<style>
:root { --bg: #14161a; --panel: #1d2026; --line: #343943; --text: #e3e6eb; --dim: #9098a5;
        --tp: #2ecc40; --fp: #ff4136; --found: #39c0ff; --fn: #ffb000; --reader: #e040fb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.4 system-ui, sans-serif; }
header { padding: 14px 20px 6px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
section { padding: 0 20px 10px; }
a { color: var(--found); }
.dim { color: var(--dim); }
.cols { display: flex; gap: 20px; flex-wrap: wrap; align-items: flex-start; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { color: var(--dim); font-weight: 600; }
td.name, th.name { text-align: left; }
#ap tbody tr { cursor: pointer; }
#ap tbody tr:hover, #ap tbody tr.sel { background: #2a2f38; }
#ap tfoot td { font-weight: 700; border-top: 2px solid var(--line); }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.bar { width: 90px; text-align: left; }
.bar span { display: inline-block; height: 9px; background: var(--found); border-radius: 2px; }
#curves { display: grid; grid-template-columns: repeat(5, 176px); gap: 6px; }
.curve { background: var(--panel); border-radius: 4px; padding: 2px; }
.curve svg { display: block; }
.controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; background: var(--panel);
            padding: 8px 12px; border-radius: 6px; position: sticky; top: 0; z-index: 2; }
.controls label { display: flex; gap: 6px; align-items: center; }
select, button { background: #2a2f38; color: var(--text); border: 1px solid var(--line); border-radius: 4px; padding: 3px 6px; }
button { cursor: pointer; }
.legend span { margin-right: 12px; }
.legend i { display: inline-block; width: 18px; height: 0; border-top: 3px solid; vertical-align: middle; margin-right: 4px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; margin-top: 10px; }
.card { background: var(--panel); border-radius: 6px; overflow: hidden; cursor: zoom-in; }
.card svg { display: block; width: 100%; height: auto; background: #000; }
.cap { padding: 5px 8px 7px; font-size: 12px; }
.cap .id { font-family: ui-monospace, monospace; }
.badge { display: inline-block; padding: 0 5px; border-radius: 3px; margin-right: 4px; font-weight: 600; color: #111; }
.b-tp { background: var(--tp); } .b-fp { background: var(--fp); } .b-fn { background: var(--fn); }
.box { fill: none; vector-effect: non-scaling-stroke; }
.box.tp { stroke: var(--tp); } .box.fp { stroke: var(--fp); }
.box.found { stroke: var(--found); } .box.fn { stroke: var(--fn); } .box.reader { stroke: var(--reader); }
.faded { opacity: 0.22; }
.lbl { paint-order: stroke; stroke: #000; stroke-width: 3px; font-weight: 700; font-family: system-ui, sans-serif; }
.lbl.tp { fill: var(--tp); } .lbl.fp { fill: var(--fp); } .lbl.found { fill: var(--found); } .lbl.fn { fill: var(--fn); }
#more { margin: 12px 0 30px; }
dialog { background: var(--panel); color: var(--text); border: 1px solid var(--line); border-radius: 8px;
         max-width: 96vw; max-height: 96vh; padding: 12px; }
dialog::backdrop { background: rgba(0, 0, 0, 0.7); }
#zoom { display: flex; gap: 14px; align-items: flex-start; }
#zoom svg { height: 84vh; width: auto; max-width: 62vw; background: #000; }
#zoom .list { max-height: 84vh; overflow: auto; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>vinbig report: out-of-fold predictions</h1>
  <div id="summary" class="dim"></div>
</header>
<section>
  <div class="cols">
    <div>
      <h2>Average precision per class (IoU &gt; <span class="iou"></span>)</h2>
      <table id="ap"><thead></thead><tbody></tbody><tfoot></tfoot></table>
      <p class="dim">TP / FP / FN: every prediction at any score, matched as the competition does (the counts
        behind <code>vinbig score</code>). Click a class to browse its images.
        Pictures: <a href="per_class_ap.png">per_class_ap.png</a>, <a href="pr_curves.png">pr_curves.png</a>,
        <a href="metrics.csv">metrics.csv</a>.</p>
    </div>
    <div>
      <h2>Precision / recall</h2>
      <div id="curves"></div>
      <p class="dim">Blue: precision along the ranking; orange: its envelope, whose area is the AP.</p>
    </div>
  </div>
</section>
<section>
  <h2>Error browser</h2>
  <div class="controls">
    <label>class <select id="cls"></select></label>
    <label>kind <select id="kind">
      <option value="all">all boxes</option>
      <option value="tp">TP: true positives</option>
      <option value="fp">FP: false positives</option>
      <option value="fn">FN: missed truth boxes</option>
    </select></label>
    <label>sort <select id="sort">
      <option value="fp">highest-scored FP first</option>
      <option value="fn">most missed boxes first</option>
      <option value="conf">most confident prediction first</option>
      <option value="conf_asc">least confident prediction first</option>
      <option value="p">P(abnormal), highest first</option>
      <option value="id">image id</option>
    </select></label>
    <label>score &ge; <input id="thr" type="range" min="0" max="1" step="0.01"> <output id="thrv"></output></label>
    <label><input id="show-truth" type="checkbox" checked> truth</label>
    <label><input id="show-preds" type="checkbox" checked> predictions</label>
    <label id="readers-toggle"><input id="show-readers" type="checkbox"> readers' boxes</label>
    <label><input id="show-labels" type="checkbox" checked> labels</label>
    <span id="count" class="dim"></span>
  </div>
  <div class="legend dim" style="margin-top:8px">
    <span><i style="border-color:var(--tp);border-top-style:dashed"></i>TP prediction</span>
    <span><i style="border-color:var(--fp);border-top-style:dashed"></i>FP prediction</span>
    <span><i style="border-color:var(--found)"></i>truth found</span>
    <span><i style="border-color:var(--fn)"></i>truth missed (FN)</span>
    <span class="rlegend"><i style="border-color:var(--reader);border-top-style:dotted"></i>a reader's box</span>
    <span>labels: class id and score; hover a box for its class name and pixels</span>
  </div>
  <div id="grid"></div>
  <button id="more">show more</button>
</section>
<dialog id="dlg"><form method="dialog" style="text-align:right"><button>close</button></form><div id="zoom"></div></dialog>
<script type="application/json" id="data">/*DATA*/</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
const PAGE = 60;
const $ = (s) => document.querySelector(s);
const NF = 14;
const state = { cls: "all", kind: "all", sort: "fp", thr: D.score_thr, truth: true, preds: true,
                readers: false, labels: true, shown: PAGE };
const fmt = (v, n = 3) => (v === null || v === undefined) ? "" : v.toFixed(n);

function el(tag, attrs, parent, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// ---------------------------------------------------------------- the metric, from the ranked TP flags
function flags(runs) {
  const n = runs.reduce((a, b) => a + b, 0), f = new Uint8Array(n);
  let i = 0;
  runs.forEach((len, k) => { if (k % 2) f.fill(1, i, i + len); i += len; });
  return f;
}
// VOC 2010 all-point AP of ranked flags (as vinbig.metric._ap), and the curve at each change of run
function apCurve(f, nTruth) {
  const prec = new Float64Array(f.length), rec = new Float64Array(f.length);
  let ctp = 0;
  for (let i = 0; i < f.length; i++) { ctp += f[i]; rec[i] = ctp / nTruth; prec[i] = ctp / (i + 1); }
  const mrec = [0, ...rec, 1], mpre = [0, ...prec, 0];
  for (let i = mpre.length - 2; i >= 0; i--) mpre[i] = Math.max(mpre[i], mpre[i + 1]);
  let ap = 0;
  for (let i = 0; i + 1 < mrec.length; i++) if (mrec[i + 1] !== mrec[i]) ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1];
  return { ap, prec, rec, env: mpre.slice(1, -1) };
}

// ---------------------------------------------------------------- table and curves
function table() {
  document.querySelectorAll(".iou").forEach((e) => { e.textContent = D.iou; });
  const runs = D.runs.map((r) => r.name);
  const head = el("tr", {}, $("#ap thead"));
  ["id", "class", runs.length ? "AP ensemble" : "AP", ...runs.map((r) => "AP " + r), "truth", "preds", "TP", "FP", "FN", ""]
    .forEach((h, k) => el("th", k === 1 ? { class: "name" } : {}, head, h));
  for (const r of D.table) {
    const tr = el("tr", { "data-class": r.id, "data-ap": r.ap === null ? "" : r.ap, "data-tp": r.tp, "data-fp": r.fp,
                          "data-fn": r.fn }, $("#ap tbody"));
    el("td", {}, tr, r.id);
    const name = el("td", { class: "name" }, tr);
    el("span", { class: "sw", style: "background:" + D.colours[r.id] }, name);
    name.appendChild(document.createTextNode(r.name));
    el("td", { class: "ap" }, tr, r.present ? fmt(r.ap, 4) : "absent");
    r.runs.forEach((v) => el("td", {}, tr, v === null ? "absent" : fmt(v, 4)));
    [r.n_truth, r.n_pred, r.tp, r.fp, r.fn].forEach((v) => el("td", {}, tr, v));
    const bar = el("td", { class: "bar" }, tr);
    if (r.present) el("span", { style: "width:" + Math.round(80 * r.ap) + "px" }, bar);
    tr.addEventListener("click", () => { $("#cls").value = String(r.id); update({ cls: String(r.id) });
                                          $("#grid").scrollIntoView({ behavior: "smooth" }); });
  }
  const foot = el("tr", {}, $("#ap tfoot"));
  const present = D.table.filter((r) => r.present).length;
  el("td", {}, foot, "");
  el("td", { class: "name" }, foot, "mAP over " + present + " classes");
  el("td", { id: "map" }, foot, fmt(D.map, 4));
  D.runs.forEach((r) => el("td", {}, foot, fmt(r.map, 4)));
  const sum = (k) => D.table.reduce((a, r) => a + r[k], 0);
  ["n_truth", "n_pred", "tp", "fp", "fn"].forEach((k) => el("td", {}, foot, sum(k)));
  el("td", {}, foot, "");
}

function curves() {
  const W = 172, H = 130, L = 24, B = 18, T = 16, R = 6;
  const x = (r) => L + r * (W - L - R), y = (p) => T + (1 - p) * (H - T - B);
  for (const r of D.table) {
    const box = el("div", { class: "curve", "data-class": r.id }, $("#curves"));
    const svg = el("svg:svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` }, box);
    el("svg:rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#444" }, svg);
    el("svg:text", { x: 3, y: 11, fill: D.colours[r.id], "font-size": 10, "font-weight": 700 }, svg,
       `${r.id} ${r.name}`.slice(0, 26));
    [0, 0.5, 1].forEach((v) => {
      el("svg:text", { x: L - 3, y: y(v) + 3, fill: "#888", "font-size": 8, "text-anchor": "end" }, svg, v);
      el("svg:text", { x: x(v), y: H - 6, fill: "#888", "font-size": 8, "text-anchor": "middle" }, svg, v);
    });
    if (!r.present) {
      el("svg:text", { x: W / 2 + 8, y: H / 2, fill: "#888", "font-size": 10, "text-anchor": "middle" }, svg, "absent from the truth");
      continue;
    }
    const f = flags(r.ranked), c = apCurve(f, r.n_truth);
    box.setAttribute("data-page-ap", c.ap);
    // points where a run of TP or FP ends: the curve is exact between them; at most ~400 points
    const ends = [];
    let i = 0;
    r.ranked.forEach((len) => { i += len; if (len) ends.push(i - 1); });
    const step = Math.max(1, Math.ceil(ends.length / 400));
    const pts = [], env = [];
    ends.forEach((e, k) => {
      if (k % step && k !== ends.length - 1) return;
      pts.push(`${x(c.rec[e]).toFixed(1)},${y(c.prec[e]).toFixed(1)}`);
      env.push(`${x(c.rec[e]).toFixed(1)},${y(c.env[e]).toFixed(1)}`);
    });
    if (pts.length) {
      el("svg:polyline", { points: pts.join(" "), fill: "none", stroke: "#39c0ff", "stroke-width": 1 }, svg);
      el("svg:polyline", { points: env.join(" "), fill: "none", stroke: "#ff9f1c", "stroke-width": 1.4 }, svg);
    }
    el("svg:text", { x: W - R - 2, y: T + 11, fill: "#ddd", "font-size": 10, "text-anchor": "end", class: "page-ap" },
       svg, "AP " + c.ap.toFixed(3));
  }
}

// ---------------------------------------------------------------- the browser
const GATE = {
  nf: (p) => `P(abnormal) ${fmt(p)} < low ${D.gate.low}: "No finding" only, boxes dropped`,
  both: (p) => `${D.gate.low} \u2264 P(abnormal) ${fmt(p)} < ${D.gate.high}: boxes + "No finding" ${fmt(1 - p)}`,
  boxes: (p) => `P(abnormal) ${fmt(p)} \u2265 high ${D.gate.high}: boxes alone`,
  none: () => "no P(abnormal): boxes kept, no gate",
};
const want = (c) => state.cls === "all" || Number(state.cls) === c;

// the boxes of an image as drawn with the current settings, each with its kind
function boxes(rec) {
  const out = [];
  for (const p of rec.preds) if (p[1] >= state.thr && want(p[0]))
    out.push({ kind: p[6] ? "tp" : "fp", cls: p[0], score: p[1], b: p.slice(2, 6), pred: true });
  for (const t of rec.truth) if (want(t[0]))
    out.push({ kind: t[5] >= state.thr ? "found" : "fn", cls: t[0], score: t[5] >= 0 ? t[5] : null, b: t.slice(1, 5) });
  return out;
}

// TP/FP/FN of an image (class 14 included: its image-level prediction and truth), sort keys
function stats(rec) {
  const s = { tp: 0, fp: 0, fn: 0, fpMax: -1, conf: -1, any: false };
  const pred = (score, tp) => { s.any = true; s.conf = Math.max(s.conf, score);
                                if (tp) s.tp++; else { s.fp++; s.fpMax = Math.max(s.fpMax, score); } };
  for (const p of rec.preds) if (p[1] >= state.thr && want(p[0])) pred(p[1], p[6]);
  if (rec.nf && rec.nf[0] >= state.thr && want(NF)) pred(rec.nf[0], rec.nf[1]);
  for (const t of rec.truth) if (want(t[0])) { s.any = true; if (t[5] < state.thr) s.fn++; }
  if (rec.nft !== null && want(NF)) { s.any = true; if (rec.nft < state.thr) s.fn++; }
  return s;
}

const SORT = {
  fp: (a, b) => b.s.fpMax - a.s.fpMax || b.s.fp - a.s.fp || b.s.fn - a.s.fn,
  fn: (a, b) => b.s.fn - a.s.fn || b.s.fpMax - a.s.fpMax,
  conf: (a, b) => b.s.conf - a.s.conf,
  conf_asc: (a, b) => a.s.conf - b.s.conf,
  p: (a, b) => (b.r.p ?? -1) - (a.r.p ?? -1),
  id: () => 0,
};

function selected() {
  const rows = [];
  for (const r of D.images) {
    const s = stats(r);
    if (state.cls !== "all" && !s.any) continue;
    if (state.kind !== "all" && !s[state.kind]) continue;
    rows.push({ r, s });
  }
  rows.sort((a, b) => SORT[state.sort](a, b) || (a.r.id < b.r.id ? -1 : a.r.id > b.r.id ? 1 : 0));
  return rows;
}

function picture(rec, big) {
  const svg = el("svg:svg", { viewBox: `0 0 ${rec.tw} ${rec.th}`, preserveAspectRatio: "xMidYMid meet" });
  if (rec.img) el("svg:image", { href: rec.img, x: 0, y: 0, width: rec.tw, height: rec.th }, svg);
  else {
    el("svg:rect", { width: rec.tw, height: rec.th, fill: "#333" }, svg);
    el("svg:text", { x: rec.tw / 2, y: rec.th / 2, fill: "#aaa", "text-anchor": "middle", "font-size": rec.tw / 14 }, svg, "no PNG");
  }
  const side = Math.max(rec.tw, rec.th), fs = side / (big ? 40 : 24);
  const sw = big ? 2 : 1.6;
  const draw = (b, cls, dash, label, title, faded) => {
    const x = b[0] * rec.sx, y = b[1] * rec.sy, w = (b[2] - b[0]) * rec.sx, h = (b[3] - b[1]) * rec.sy;
    const g = el("svg:g", faded ? { class: "faded" } : {}, svg);
    el("svg:rect", { x, y, width: Math.max(w, 0.5), height: Math.max(h, 0.5), class: cls, "stroke-width": sw,
                     "stroke-dasharray": dash || "none" }, g);
    el("svg:title", {}, g, title);
    if (state.labels && label) {
      const top = y - 2 > fs ? y - 2 : y + fs;
      el("svg:text", { x: x + 1, y: top, "font-size": fs, class: "lbl " + cls.split(" ")[1] }, g, label);
    }
  };
  const bright = (kind) => state.kind === "all" || state.kind === kind || (state.kind === "tp" && kind === "found");
  const px = (b) => "[" + b.map((v) => Math.round(v)).join(", ") + "]";
  if (state.readers && rec.readers) for (const q of rec.readers) if (want(q[1]))
    draw(q.slice(2, 6), "box reader", "1 2", "", `reader ${q[0]}: ${q[1]} ${D.classes[q[1]]} ${px(q.slice(2, 6))}`, false);
  for (const k of boxes(rec)) {
    if (k.pred ? !state.preds : !state.truth) continue;
    const what = { tp: "TP", fp: "FP", found: "truth, found", fn: "truth, missed (FN)" }[k.kind];
    const title = `${what}: ${k.cls} ${D.classes[k.cls]}` + (k.pred ? ` score ${fmt(k.score)}` :
      (k.score !== null ? ` (found by a box of score ${fmt(k.score)})` : "")) + " " + px(k.b);
    draw(k.b, "box " + k.kind, k.pred ? "4 2" : "", k.pred ? `${k.cls} ${fmt(k.score, 2).replace(/^0/, "")}` : `${k.cls}`,
         title, !bright(k.kind));
  }
  return svg;
}

function caption(rec, s, parent) {
  const cap = el("div", { class: "cap" }, parent);
  el("div", { class: "id" }, cap, rec.id);
  const badges = el("div", {}, cap);
  el("span", { class: "badge b-tp" }, badges, "TP " + s.tp);
  el("span", { class: "badge b-fp" }, badges, "FP " + s.fp);
  el("span", { class: "badge b-fn" }, badges, "FN " + s.fn);
  if (s.fpMax >= 0) el("span", { class: "dim" }, badges, "top FP " + fmt(s.fpMax, 2));
  const nf = [];
  if (rec.nft !== null) nf.push("truth: No finding");
  if (rec.nf) nf.push(`"No finding" ${fmt(rec.nf[0], 2)} ${rec.nf[1] ? "TP" : "FP"}`);
  if (nf.length) el("div", { class: "dim" }, cap, nf.join(" \u00b7 "));
  if (rec.gate) el("div", { class: "dim gate", "data-gate": rec.gate }, cap, GATE[rec.gate](rec.p));
  else if (rec.p !== null) el("div", { class: "dim" }, cap, "P(abnormal) " + fmt(rec.p));
  if (rec.hidden) el("div", { class: "dim" }, cap, `${rec.hidden} boxes below ${D.min_score} or beyond the best ${D.max_boxes} not in the page`);
  return cap;
}

function render() {
  const rows = selected(), grid = $("#grid");
  grid.replaceChildren();
  for (const { r, s } of rows.slice(0, state.shown)) {
    const card = el("div", { class: "card", "data-id": r.id }, grid);
    card.appendChild(picture(r, false));
    caption(r, s, card);
    card.addEventListener("click", () => zoom(r));
  }
  const more = rows.length - Math.min(rows.length, state.shown);
  $("#more").style.display = more > 0 ? "" : "none";
  $("#more").textContent = `show ${Math.min(PAGE, more)} more (${more} left)`;
  $("#count").textContent = `${rows.length} of ${D.images.length} images` +
    (D.images.length < D.n_images ? ` (the page holds the ${D.images.length} most wrong of ${D.n_images})` : "");
}

function zoom(rec) {
  const z = $("#zoom");
  z.replaceChildren();
  z.appendChild(picture(rec, true));
  const side = el("div", { class: "list" }, z);
  caption(rec, stats(rec), side);
  const t = el("table", {}, side);
  const h = el("tr", {}, t);
  ["kind", "class", "score", "x_min", "y_min", "x_max", "y_max"].forEach((c, k) => el("th", k === 1 ? { class: "name" } : {}, h, c));
  const row = (kind, cls, score, b) => {
    const tr = el("tr", { class: "row-" + kind }, t);
    el("td", {}, tr, { tp: "TP", fp: "FP", found: "found", fn: "FN" }[kind]);
    el("td", { class: "name" }, tr, `${cls} ${D.classes[cls]}`);
    el("td", {}, tr, fmt(score));
    if (b) b.forEach((v) => el("td", {}, tr, Math.round(v)));
    else el("td", { colspan: 4, class: "name dim" }, tr, "the image");
  };
  if (rec.nf && rec.nf[0] >= state.thr && want(NF)) row(rec.nf[1] ? "tp" : "fp", NF, rec.nf[0], null);
  if (rec.nft !== null && want(NF)) row(rec.nft >= state.thr ? "found" : "fn", NF, rec.nft >= 0 ? rec.nft : null, null);
  for (const k of boxes(rec)) row(k.kind, k.cls, k.score, k.b);
  $("#dlg").showModal();
}

function update(change) {
  Object.assign(state, change, { shown: PAGE });
  document.querySelectorAll("#ap tbody tr").forEach((tr) => tr.classList.toggle("sel", tr.dataset.class === state.cls));
  render();
}

function controls() {
  const cls = $("#cls");
  el("option", { value: "all" }, cls, "all classes");
  for (const r of D.table) if (r.n_truth || r.n_pred) el("option", { value: r.id }, cls, `${r.id} ${r.name}`);
  cls.addEventListener("change", () => update({ cls: cls.value }));
  $("#kind").addEventListener("change", (e) => update({ kind: e.target.value }));
  $("#sort").addEventListener("change", (e) => update({ sort: e.target.value }));
  if (!D.gate && !D.images.some((r) => r.p !== null)) $('#sort option[value="p"]').remove();
  const thr = $("#thr");
  thr.min = D.min_score; thr.value = D.score_thr;
  $("#thrv").textContent = fmt(state.thr, 2);
  thr.addEventListener("input", () => { $("#thrv").textContent = fmt(Number(thr.value), 2); update({ thr: Number(thr.value) }); });
  for (const [id, key] of [["show-truth", "truth"], ["show-preds", "preds"], ["show-readers", "readers"], ["show-labels", "labels"]])
    $("#" + id).addEventListener("change", (e) => update({ [key]: e.target.checked }));
  if (!D.readers) { $("#readers-toggle").style.display = "none"; $(".rlegend").style.display = "none"; }
  $("#more").addEventListener("click", () => { state.shown += PAGE; render(); });
  $("#dlg").addEventListener("click", (e) => { if (e.target === $("#dlg")) $("#dlg").close(); });
}

function summary() {
  const parts = [`mAP@${D.iou} ${fmt(D.map, 4)}`, `${D.n_images} out-of-fold images`, `${D.n_preds} predictions`];
  if (D.runs.length) parts.push(`ensemble of ${D.runs.length} runs (${D.runs.map((r) => r.name).join(", ")})`);
  parts.push(D.gate ? `"No finding" gate: low ${D.gate.low}, high ${D.gate.high}` : `"No finding" gate off`);
  if (D.ignored) parts.push(`${D.ignored} predictions of images absent from the truth ignored`);
  $("#summary").textContent = parts.join(" \u00b7 ");
}

summary();
table();
curves();
controls();
update({});
</script>
</body>
</html>
"""
