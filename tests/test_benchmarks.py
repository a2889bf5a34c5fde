"""Benchmark scripts that the suite runs in their tiny form, so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_on_the_cpu_with_tiny_models(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert results["device"] == "cpu"
    assert results["training"]["ratio_nls_over_peft"] > 0
    assert results["evaluation"]["evaluations_per_hour"] > 0
    assert results["end_to_end"]["evaluations"] == 8
    assert (tmp_path / "gpu_tiny.md").read_text().startswith("# GPU check")
