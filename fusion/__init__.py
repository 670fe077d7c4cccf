"""Metric, weighted boxes fusion, "No finding" gate and submission. Not built yet: see the fusion issue."""
