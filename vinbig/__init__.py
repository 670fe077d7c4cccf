"""vinbig: chest X-ray abnormality detection for the VinBigData competition.

Shared pieces used by every stage: the command line (`vinbig.cli`), the config (`vinbig.config`),
the stage contract (`vinbig.artifacts`), DICOM reading (`vinbig.dicom`), box geometry
(`vinbig.boxes`), the competition metric (`vinbig.metric`) and the synthetic dataset (`vinbig.synth`).
The stages are the packages `folds`, `detector`, `classifier` and `fusion`.
"""

__version__ = "0.1.0"
