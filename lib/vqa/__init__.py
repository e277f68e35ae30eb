"""Visual question answering on MIMIC-Ext-CXR-QBA-format data (docs/vqa.md)."""
