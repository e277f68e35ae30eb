"""Study-aware training batches: no two images of one study (one report) in a batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def study_aware_batches(
    study: np.ndarray, batch_size: int, seed: int, epoch: int, drop_last: bool = True
) -> list[np.ndarray]:
    """Shuffled batches in which no two images share a study.

    Images of one study share one report, so inside a batch they would be each other's
    false negatives. An image whose study is already in the current batch waits for the
    next one; the order depends only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(study))
    batches: list[np.ndarray] = []
    pending: list[int] = []
    current: list[int] = []
    seen: set[int] = set()
    queue: Iterator[int] = iter(order.tolist())
    while True:
        placed = False
        for i, idx in enumerate(pending):
            if study[idx] not in seen:
                current.append(pending.pop(i))
                seen.add(int(study[current[-1]]))
                placed = True
                break
        if not placed:
            nxt = next(queue, None)
            if nxt is None:
                break
            if study[nxt] in seen:
                pending.append(nxt)
                continue
            current.append(nxt)
            seen.add(int(study[nxt]))
        if len(current) == batch_size:
            batches.append(np.array(current))
            current, seen = [], set()
    # Images still pending share a study with the last partial batch; like that batch (with
    # drop_last) they sit this epoch out and come back in another order next epoch.
    if current and not drop_last:
        batches.append(np.array(current))
    return batches
