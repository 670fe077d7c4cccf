"""Fusion stage: weighted boxes fusion of the detector's prediction sets, the "No finding" gate, tuning on
out-of-fold predictions, the test submission (written and validated through `vinbig.submission`), the report.
The metric is `vinbig.metric`.

Names are imported on first use, so `vinbig --help` does not pay for numba, pandas or matplotlib.
"""

from vinbig.lazy import lazy_exports

_EXPORTS = {
    "wbf": "fusion._wbf",
    "FusionInput": "fusion._fuse",
    "load_inputs": "fusion._fuse",
    "fuse": "fusion._fuse",
    "apply_gate": "fusion._gate",
    "image_probabilities": "fusion._gate",
    "gate_scores": "fusion._tune",
    "tune": "fusion._tune",
    "write_tuned": "fusion._tune",
    "predict": "fusion._stage",
    "score_oof": "fusion._stage",
    "oof_inputs": "fusion._stage",
    "fusion_config": "fusion._stage",
    "make_submission": "fusion._stage",
    "write_report": "fusion._report",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
