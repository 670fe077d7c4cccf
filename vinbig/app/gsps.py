"""`vinbig predict --dicom-out`: a DICOM Grayscale Softcopy Presentation State per image (highdicom) that a viewer
(OHIF, Weasis, a PACS) overlays on the source image: the boxes as graphic annotations, their labels as text."""

from __future__ import annotations

from pathlib import Path

from vinbig.artifacts import BOX, CLASS_NAMES, atomic_path, writing
from vinbig.app.results import Result, rerun_fix, summary_line

_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def gsps(r: Result, thr: float, most: int):
    """A Grayscale Softcopy Presentation State (highdicom) on the source image: each box of score >= `thr` (at most
    `most`) a closed polyline in image pixels (DICOM's PIXEL units: 0,0 is the top left corner of the first
    pixel, as vinbig's boxes) with its class name and score as text, a line of text with P(abnormal) and the gate,
    and a series description that says it is not for diagnostic use. Raises ValueError for a source it cannot
    reference (a header without the UIDs a presentation state must share)."""
    import highdicom as hd
    import numpy as np
    from highdicom.pr import (AnnotationUnitsValues, GraphicAnnotation, GraphicLayer, GraphicObject,
                              GraphicTypeValues, GrayscaleSoftcopyPresentationState, TextObject)

    import vinbig
    from fusion import drawn_boxes

    ds = r.image.header
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(k, "")).strip()]
    if missing:
        raise ValueError(f"the source header lacks {', '.join(missing)}, which a presentation state references")
    ref = ds.copy()  # highdicom reads the image's size from it, and the patient and study it copies
    ref.Rows, ref.Columns = r.image.height, r.image.width
    for key in _TYPE2:  # type 2 (may be empty) in a presentation state; many exports leave them out
        if key not in ref:
            setattr(ref, key, "")
    layer = GraphicLayer(layer_name="VINBIG", order=1, description="vinbig predicted boxes: not for diagnostic use")
    shown = drawn_boxes(r.boxes, thr, most)
    text_h = max(8.0, 0.022 * r.image.height)
    objects, texts = [], []
    for row in shown.itertuples():
        x0, y0, x1, y1 = (float(getattr(row, c)) for c in BOX)
        objects.append(GraphicObject(GraphicTypeValues.POLYLINE,
                                     np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64),
                                     AnnotationUnitsValues.PIXEL))
        text = f"{CLASS_NAMES[int(row.class_id)]} {row.score:.2f}"
        top = y0 - text_h if y0 >= text_h else y0
        right = min(float(r.image.width), max(x1, x0 + 0.6 * text_h * len(text)))
        texts.append(TextObject(text, AnnotationUnitsValues.PIXEL, bounding_box=(x0, top, right, top + text_h),
                                text_justification="LEFT"))
    head = f"vinbig: {summary_line(r)} - NOT FOR DIAGNOSTIC USE"
    texts.append(TextObject(head, AnnotationUnitsValues.PIXEL, text_justification="LEFT",
                            bounding_box=(0.0, 0.0, min(float(r.image.width), 0.6 * text_h * len(head)), text_h)))
    kwargs = {}
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # bone bright, as the image itself shows
        kwargs["presentation_lut_transformation"] = hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE)
    if r.image.voi == "percentile":  # the file has no window: the one vinbig computed, so a viewer shows its view
        low, high = r.image.window
        kwargs["voi_lut_transformations"] = [hd.pr.SoftcopyVOILUTTransformation(
            window_center=(low + high) / 2, window_width=max(high - low, 1.0))]
    annotation = GraphicAnnotation([ref], layer, graphic_objects=objects or None, text_objects=texts)
    out = GrayscaleSoftcopyPresentationState(
        referenced_images=[ref], series_instance_uid=hd.UID(), series_number=990, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="vinbig", manufacturer_model_name="vinbig predict",
        software_versions=vinbig.__version__, device_serial_number="none", content_label="VINBIG",
        content_description="vinbig predicted boxes, not for diagnostic use", graphic_annotations=[annotation],
        graphic_layers=[layer], content_creator_name="vinbig^", **kwargs)
    out.SeriesDescription = "vinbig boxes - NOT FOR DIAGNOSTIC USE"
    return out


def write_gsps(r: Result, out: Path, thr: float, most: int) -> Path:
    ds = gsps(r, thr, most)
    with writing(out, rerun_fix), atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out

