"""vinbig: chest X-ray abnormality detection for the VinBigData competition.

Three layers (README, "Code map"):

* the foundation, this package's modules: errors (`vinbig.errors`), the config and its declaration
  (`vinbig.config`, `vinbig.options`), the stage contract (`vinbig.artifacts`), the submission format
  (`vinbig.submission`), the metric (`vinbig.metric`), box geometry (`vinbig.boxes`), DICOM reading
  (`vinbig.dicom`) and the synthetic dataset (`vinbig.synth`);
* the stage packages `folds`, `detector`, `classifier` and `fusion`, which import only the foundation;
* the application, `vinbig.app`: the command line, the demo and the Kaggle export, which drive the stages.
"""

__version__ = "0.1.0"
