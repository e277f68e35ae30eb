"""One thin script per DVC stage: parse paths, load params, call lib/, write atomically."""
