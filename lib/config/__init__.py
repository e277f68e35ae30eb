"""params.yaml as validated dataclasses, and the variants A–E resolved from it."""
