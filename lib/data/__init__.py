"""The data chain: MIMIC-CXR reading, views, reports, labels, splits, QC, images and the pack."""
