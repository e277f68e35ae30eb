"""What every stage script shares: ``run(main)``, which turns a PipelineError into a
readable message and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

from lib.errors import PipelineError


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a PipelineError becomes a readable message and exit code 1."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
