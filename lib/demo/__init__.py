"""Synthetic corpora: the demo corpus (MIMIC-CXR-JPG layout) and the backbone's pretraining one."""
