"""Errors the pipeline raises for bad input: each message names the file or key,
the bad value and the fix, and stage scripts print it without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: an error a user can fix by changing data or params."""


class ParamsError(PipelineError):
    """params.yaml has an unknown key, a wrong type or an impossible combination."""


class DataError(PipelineError):
    """The raw data is missing, malformed, or unfit for training."""
