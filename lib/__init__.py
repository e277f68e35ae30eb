"""Shared logic of the Patch-IB-CXR pipeline; stage scripts in ``stages/`` stay thin."""
