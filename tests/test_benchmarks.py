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
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert results["device"] == "cpu"
    assert results["training"]["ratio_nls_over_peft"] > 0
    assert results["evaluation"]["evaluations_per_hour"] > 0
    assert results["end_to_end"]["evaluations"] == 8
    path = results["gpu_path"]
    assert path["training"]["steps"] == 3 and path["training"]["dtype"] == "float32"
    assert path["sparsify"]["sparsity"] == pytest.approx(0.5, abs=0.01) and path["qa_step"]["finite"]
    assert path["reorder"]["max_logit_change"] < 1e-4  # reordering keeps the max subnet's function
    assert set(path["latency"]["seconds"]) == {"max", "heuristic", "min"}
    assert len(path["preflight"]) == 4  # training, sparsify, quantize, the QA step
    assert path["preflight"][0].startswith("preflight: one training step of 8 x ")
    two = results["end_to_end"]["two_processes"]
    assert two["evaluations"] == 8 and two["largest_accuracy_difference"] == 0.0  # CPU workers: bit for bit
    assert (tmp_path / "gpu_tiny.md").read_text().startswith("# GPU check")


def test_the_search_cost_benchmark_runs_its_synthetic_part_and_charges_every_item(tmp_path):
    out = tmp_path / "cost"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search_cost.py"), "--part", "synthetic",
                           "--seeds", "2", "--budget", "30", "--short-budget", "20", "--methods", "nsga2",
                           "nsga2+racing", "nsga2+decomposed", "tpe", "--results", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # run_method asserts the forwards charged are the items scored
    results = json.loads(out.with_suffix(".json").read_text())
    decomposed = results["summary"]["nsga2+decomposed"]
    assert len(decomposed["share_to_99"]) == 2 and decomposed["vs_tpe"]["compared"] > 0
    assert all(s["surrogate_checks"] >= 8 for s in decomposed["surrogate"])
    assert set(results["fidelity"]) == {"4", "8", "16"}


def test_the_depth_and_recovery_ablation_runs_end_to_end_on_tiny_llama(tmp_path):
    data = ROOT.parent / "shared" / "data" / "llm-adapters"
    if not data.is_dir():
        pytest.skip("needs ../shared/data/llm-adapters")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_modeb_ablation.py"), "--part", "depth",
                           "--quick", "--model", "tiny-llama", "--runs", str(tmp_path), "--threads", "1",
                           "--stages", "train", "searchset", "search", "recover", "test", "speed"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((tmp_path / "test.json").read_text())
    variants = {(e["arm"], e["variant"]) for e in test.values()}
    assert {("lora", "-"), ("depth", "searched"), ("depth", "recovered"), ("depth", "recovered+KD"),
            ("widths", "recovered")} <= variants
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["lora"]["speedup"]["1"] == 1.0 and any(s["layers"] < 4 for s in speed.values())
