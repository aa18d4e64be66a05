"""Side-by-side timing helpers shared by the speed benchmarks (inferer, precision, end-to-end, backends, gpu).

Every comparison runs its candidates interleaved in one process, round after round (the order rotates each
round, so a slow spell of the shared machine hits every candidate alike), and reports medians. Both clocks are
kept: wall time (what a user waits) and CPU time of the process (less sensitive to other users of the cores, but
it counts the spinning of idle OpenMP threads when several run).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "Timings", "conditions", "interleaved", "write_result"]


class Timings(dict):
    """``name -> list of (wall seconds, CPU seconds)``, one entry per round."""

    def wall(self, name: str) -> float:
        """Median wall seconds of ``name``."""
        return statistics.median(wall for wall, _ in self[name])

    def cpu(self, name: str) -> float:
        """Median CPU seconds of ``name``."""
        return statistics.median(cpu for _, cpu in self[name])

    def ratio(self, slower: str, faster: str, clock: str = "wall") -> float:
        """Median over rounds of ``time(slower) / time(faster)``: pairs from the same round share the load."""
        index = 0 if clock == "wall" else 1
        pairs = zip(self[slower], self[faster])
        return statistics.median(a[index] / b[index] for a, b in pairs)


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """Time every candidate once per round for ``repeats`` rounds, after ``warmup`` untimed rounds.

    Args:
        candidates: name -> zero-argument callable.
        repeats: timed rounds.
        warmup: untimed rounds first (allocator, oneDNN primitive caches, lazy initialisation).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    timings = Timings({name: [] for name in names})
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return timings


def conditions(threads: int | None = None) -> str:
    """One line saying where and under what load the figures were taken."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    threads = torch.get_num_threads() if threads is None else threads
    return (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{threads} torch thread(s); load average {load} at the end (other jobs share the cores)"
    )


def write_result(name: str, title: str, body: str) -> Path:
    """Write ``body`` under a ``# title`` heading to ``benchmarks/results/<name>.md`` and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\n{body.rstrip()}\n")
    return path
