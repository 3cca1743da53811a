"""The one timing loop behind every measured kernel choice (``cpu`` and ``cuda``)."""

from __future__ import annotations

import time
from typing import Callable


def faster(cases: dict[str, Callable[[], object]], calls: int, *, favoured: str, margin: float = 0.05,
           sync: Callable[[], object] = lambda: None) -> str:
    """The name of the faster of ``cases``: each called once to warm up, then ``calls`` times, alternated with
    the others; each keeps its fastest call (on a shared machine the steadier estimate). Another case wins over
    ``favoured`` only when faster by more than ``margin``. ``sync`` waits for the device after each call (a CUDA
    kernel returns before it has run)."""
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        case()
    sync()
    for _ in range(calls):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            sync()
            runs[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in runs.items()}
    challenger = min((name for name in cases if name != favoured), key=best.__getitem__, default=favoured)
    return challenger if best[challenger] * (1 + margin) < best[favoured] else favoured
