"""The synthetic demo corpus (MIMIC-CXR-JPG layout): image renderer, report writer, corpus."""
