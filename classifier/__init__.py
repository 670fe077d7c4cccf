"""Five-fold EfficientNet "No finding" classifier (timm). Not built yet: see the classifier issue."""
