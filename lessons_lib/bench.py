"""Timing done right (the essentials; lesson 08 builds on it): warm-up, repeats, median and spread."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_call(fn: Callable[[], object], warmup: int = 3, repeats: int = 20) -> tuple[float, float]:
    """Median and interquartile range, in seconds, of fn() over `repeats` runs after `warmup` runs."""
    if repeats < 4:
        raise ValueError("repeats must be at least 4 to report a spread")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times), q[2] - q[0]
