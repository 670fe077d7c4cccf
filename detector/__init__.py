"""Five-fold YOLOv8 detectors (ultralytics). Not built yet: see the detector issue."""
