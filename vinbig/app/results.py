"""What `vinbig predict` writes for each image and at the end: the overlays, predictions.csv, predictions.json,
errors.csv and the summary it prints. Every file is written to a temporary name and renamed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vinbig.artifacts import BOX, CLASS_NAMES, ERROR_COLUMNS, NO_FINDING, atomic_path, write_csv, write_fix, writing

COLUMNS = ("file", "image_id", "class_id", "class_name", "score", *BOX, "p_abnormal", "gate")
TABLES = ("predictions.csv", "predictions.json", "errors.csv")


@dataclass
class Result:
    """One image's prediction: its final boxes (original pixels), P(abnormal), the gate and its "No finding"."""

    image: object  # vinbig.app.inputs.Image
    boxes: object  # DataFrame: class_id, score, x_min..y_max; class 14 left out, highest score first
    no_finding: float | None
    p: float | None
    gate: str  # a key of fusion.GATES
    overlay: Path | None = None
    gsps: Path | None = None


def summary_line(r: Result) -> str:
    """P(abnormal), the gate's decision and 'No finding' of `r`, as the overlay, the GSPS and the summary say them."""
    parts = [f"P(abnormal) {r.p:.2f}, gate {r.gate}" if r.p is not None else "gate off"]
    if r.no_finding is not None:
        parts.append(f"No finding {r.no_finding:.2f}")
    return ", ".join(parts)


def write_overlay(r: Result, out: Path, thr: float, most: int) -> Path:
    """The converted radiograph with the boxes of score >= `thr` (at most `most`), each with its class name and
    score, and a line with the image id, P(abnormal), the gate and 'No finding' (fusion.draw_predictions)."""
    from fusion import draw_predictions, encode_png

    i = r.image
    canvas = draw_predictions(i.image, i.width, i.height, r.boxes, f"{i.image_id[:24]}: {summary_line(r)}", thr, most)
    write_bytes(out, encode_png(canvas, out, fast=True))
    return out


def rerun_fix(e: OSError) -> str:
    """The fix of a failed write of an output: free space or mend the permission, then predict again."""
    return f"{write_fix(e)}, then run 'vinbig predict' again"


def write_bytes(path: Path, data: bytes) -> None:
    with writing(path, rerun_fix), atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _box(b) -> dict:
    """One box of Result.boxes (a row of itertuples) as predictions.csv and predictions.json give it."""
    c = int(b.class_id)
    return {"class_id": c, "class_name": CLASS_NAMES[c], "score": float(b.score),
            **{k: float(getattr(b, k)) for k in BOX}}


def table_rows(results: Sequence[Result]) -> list[dict]:
    """predictions.csv: per image its row (p_abnormal, gate), its boxes by score, then 'No finding'."""
    rows = []
    for r in results:
        base = {"file": str(r.image.file), "image_id": r.image.image_id}
        rows.append({**base, "p_abnormal": r.p, "gate": r.gate})
        rows += [{**base, **_box(b)} for b in r.boxes.itertuples()]
        if r.no_finding is not None:
            rows.append({**base, "class_id": NO_FINDING, "class_name": CLASS_NAMES[NO_FINDING],
                         "score": r.no_finding})
    return rows


def json_image(r: Result, out: Path) -> dict:
    return {
        "file": str(r.image.file), "image_id": r.image.image_id,
        "sop_instance_uid": str(r.image.header.get("SOPInstanceUID", "")) or None,
        "width": r.image.width, "height": r.image.height,
        "p_abnormal": _none(r.p), "gate": r.gate, "no_finding": _none(r.no_finding),
        "boxes": [_box(b) for b in r.boxes.itertuples()],
        "overlay": r.overlay.relative_to(out).as_posix() if r.overlay else None,
        "gsps": r.gsps.relative_to(out).as_posix() if r.gsps else None,
    }




def write_tables(out: Path, results: Sequence[Result], failed: Sequence[dict], settings: dict) -> None:
    """predictions.csv, errors.csv and predictions.json (`settings`: what predicted)."""
    import pandas as pd
    from fusion import GATES

    table = pd.DataFrame(table_rows(results), columns=list(COLUMNS))
    table["class_id"] = table["class_id"].astype("Int64")
    with writing(out / "predictions.csv", rerun_fix):
        write_csv(table, out / "predictions.csv", COLUMNS)
    with writing(out / "errors.csv", rerun_fix):
        write_csv(pd.DataFrame(list(failed), columns=list(ERROR_COLUMNS)), out / "errors.csv", ERROR_COLUMNS)
    doc = {"settings": settings, "gates": GATES, "images": [json_image(r, out) for r in results],
           "failed": [dict(e) for e in failed]}
    write_bytes(out / "predictions.json", json.dumps(doc, indent=1, allow_nan=False).encode())


@dataclass
class Predictions:
    """What `vinbig predict` did: the results, the inputs that failed, where it wrote, and the time of each part."""

    out: Path
    results: list[Result]
    failed: list[dict]
    # seconds of: read, detector, classifier, fusion, writing (work on the images, summed over threads); load (the
    # models), images (wall time after loading them), total (wall time of all)
    seconds: dict[str, float]
    settings: dict


def format_summary(pred: Predictions, dicom_out: bool, most: int = 10) -> str:
    """What the command prints at the end: counts, each image's top findings, the failures, time, outputs."""
    results, failed, out = pred.results, pred.failed, pred.out
    n_in = len(results) + len({e["file"] for e in failed if not e["reason"].startswith("no GSPS")})
    lines = ["", f"predicted {len(results)} of {n_in} input(s) with {pred.settings['model']}"]
    for r in results[:most]:
        top = ", ".join(f"{CLASS_NAMES[int(b.class_id)]} {b.score:.2f}" for b in r.boxes.head(3).itertuples())
        lines.append(f"  {r.image.image_id}: {top or 'no box'}; {summary_line(r)}")
    if len(results) > most:
        lines.append(f"  ... and {len(results) - most} more in predictions.csv")
    if failed:
        lines.append(f"failed: {len(failed)} (errors.csv)")
        lines += [f"  {e['file']}: {e['reason']}" for e in failed[:20]]
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more in {out / 'errors.csv'}")
    s, n = pred.seconds, len(results)
    models = s["detector"] + s["classifier"]
    lines.append(f"time: {s['total']:.1f} s: loading the models {s['load']:.1f} s, then {s['images'] / n:.3f} s per "
                 f"image (read and convert {s['read'] / n:.3f}, models {models / n:.3f}, fusion {s['fusion'] / n:.3f}, "
                 f"writing {s['writing'] / n:.3f})" if n else f"time: {s['total']:.1f} s")
    outputs = f"{out / 'predictions.csv'}, predictions.json, overlays/"
    lines.append(f"outputs: {outputs}" + (", gsps/" if dicom_out else "") + (", errors.csv" if failed else ""))
    return "\n".join(lines)

