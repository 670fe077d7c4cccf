"""vinbig: chest X-ray abnormality detection for the VinBigData competition.

Shared pieces used by every stage: the command line (`vinbig.cli`), the config (`vinbig.config`),
the stage contract (`vinbig.artifacts`), DICOM reading (`vinbig.dicom`), box geometry
(`vinbig.boxes`) and the synthetic dataset (`vinbig.synth`).
"""

__version__ = "0.1.0"
