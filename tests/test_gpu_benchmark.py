"""benchmarks/gpu.py runs on a CPU at small sizes, so the one-command GPU benchmark is known to work before a GPU
is lent."""

from __future__ import annotations

import pytest

from benchmarks.gpu import run_benchmark


@pytest.mark.usefixtures("single_thread")
def test_gpu_benchmark_runs_on_a_cpu_at_small_sizes():
    results = run_benchmark(size=48, slices=5, features=4, sw_batch_size=2, device="cpu", repeats=1)
    meta = results.pop("meta")
    assert meta["device"] == "cpu" and meta["windows"] == 5
    expected = {
        "network only, same windows",
        "ours, k=2, runs of slices",
        "ours, k=2, indexed batches",
        "ours, k=2, volume and output in CPU memory",
        "ours, k=0",
        "MONAI SliceInferer, k=0",
    }
    assert set(results) == expected
    assert all(r["seconds"] > 0 and r["peak_gib"] is None for r in results.values())
    assert all(results[name]["efficiency"] > 0 for name in ("ours, k=2, runs of slices", "ours, k=2, indexed batches"))
    assert results["MONAI SliceInferer, k=0"]["max_abs_diff_vs_ours"] < 0.05
