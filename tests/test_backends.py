"""Parallel evaluation: the processes and ray backends, a shared optuna study, and their errors.

Every backend must give the local backend's results for the same seed, whatever order the
workers finish in. The Ray tests share one local Ray (2 CPUs) and are skipped without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import Surrogate, make_space, objectives

from lorasearch import LoraSearchError
from lorasearch.cli import main
from lorasearch.models.loading import tiny_model
from lorasearch.network.supernet import SuperNetwork
from lorasearch.runs import NetworkSettings, SearchRun, TaskSettings
from lorasearch.search import SearchSettings, run_search
from lorasearch.search.backends import BackendSettings, LocalBackend
from lorasearch.search.processes import ProcessBackend
from lorasearch.search.workers import WorkerSetup, plan_workers

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "tiny-llama.yaml")
COLUMNS = ["eval_id", "genes", "accuracy", "macs", "generation", "source", "feasible", "is_pareto"]


@dataclass
class SurrogateRecipe:
    """A worker recipe over the synthetic objectives; with ``die_marker`` the first worker to
    evaluate the min config kills itself (SIGKILL), as a lost node would."""

    fingerprint: str | None = None
    die_marker: str | None = None

    def __call__(self) -> WorkerSetup:
        space = make_space()
        found = objectives(Surrogate(space))
        if self.die_marker:
            accuracy, marker, smallest = found[0].fn, Path(self.die_marker), space.min()

            def dying(config):
                if config == smallest and not marker.exists():
                    marker.touch()
                    os.kill(os.getpid(), signal.SIGKILL)
                return accuracy(config)

            found[0].fn = dying
        return WorkerSetup(found, self.fingerprint)


def tiny_run(budget: int = 12, strategy: str = "nsga2") -> SearchRun:
    return SearchRun(NetworkSettings(model="tiny-llama", space=SPACE), TaskSettings(limit=16),
                     SearchSettings(strategy=strategy, budget=budget, population=4, seed=3))


@pytest.fixture
def one_thread():
    """Workers run one torch thread each; the local reference does the same, so sums agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result, _ = tiny_run().run(tmp_path_factory.mktemp("local") / "run")
    torch.set_num_threads(before)
    return result.table[COLUMNS]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), before or ""])  # workers import test_search
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    yield ray
    ray.shutdown()


class ReversedBackend(LocalBackend):
    """Finishes each batch back to front, as parallel workers may; ``fail_after`` crashes mid-batch."""

    def __init__(self, objectives, fail_after: int | None = None) -> None:
        super().__init__(objectives)
        self.fail_after, self.done = fail_after, 0

    def evaluate(self, configs):
        results = list(super().evaluate(configs))
        for item in reversed(results):
            if self.fail_after is not None and self.done == self.fail_after:
                raise KeyboardInterrupt
            self.done += 1
            yield item


# --------------------------------------------------------------------------- determinism
def test_completion_order_changes_nothing_even_across_a_crash(tmp_path):
    space = make_space()
    settings = SearchSettings(budget=30, population=8, seed=4)
    local = run_search(space, objectives(Surrogate(space)), settings).table
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_search(space, objectives(Surrogate(space)), settings, out_dir=out,
                   backend=ReversedBackend(objectives(Surrogate(space)), fail_after=13))
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == 13  # a batch half done, back to front
    resumed = run_search(space, objectives(Surrogate(space)), settings, out_dir=out, resume=True,
                         backend=ReversedBackend(objectives(Surrogate(space))))
    pd.testing.assert_frame_equal(resumed.table[COLUMNS], local[COLUMNS])


def test_processes_backend_gives_the_local_results(tmp_path, local_tiny, one_thread):
    result, _ = tiny_run().run(tmp_path / "run", backend=BackendSettings("processes", 2))
    pd.testing.assert_frame_equal(result.table[COLUMNS], local_tiny)


def test_ray_backend_gives_the_local_results(tmp_path, local_tiny, ray_local, one_thread):
    result, _ = tiny_run().run(tmp_path / "run", backend=BackendSettings("ray", 2))
    pd.testing.assert_frame_equal(result.table[COLUMNS], local_tiny)


def test_a_killed_ray_worker_loses_no_evaluation(tmp_path, ray_local):
    from lorasearch.search.ray_backend import RayBackend

    space, settings = make_space(), SearchSettings(budget=24, population=6, seed=1)
    local = run_search(space, objectives(Surrogate(space)), settings).table
    marker, out = tmp_path / "died", tmp_path / "run"
    with RayBackend(SurrogateRecipe(die_marker=str(marker)), 2) as backend:
        result = run_search(space, objectives(Surrogate(space)), settings, out_dir=out, backend=backend)
        assert marker.exists() and backend.deaths == 1  # one worker died; a replacement took its place
    logged = (out / "evaluations.jsonl").read_text().splitlines()
    assert len(logged) == 24 and result.table["genes"].nunique() == 24
    pd.testing.assert_frame_equal(result.table[COLUMNS], local[COLUMNS])


# -------------------------------------------------------------------- optuna's storage
def test_two_processes_share_one_sqlite_study_without_repeating_a_config(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "lorasearch.cli", "search", "--model", "tiny-llama", "--space", SPACE,
               "--limit", "32", "--strategy", "tpe", "--budget", "24", "--population", "4", "--storage", url]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORASEARCH_DEBUG": "1"}  # a failure shows its traceback
    procs = [subprocess.Popen([*command, "--out", str(tmp_path / f"run{i}")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    logs = [(tmp_path / f"run{i}" / "evaluations.jsonl").read_text().splitlines() for i in range(2)]
    genes = [tuple(json.loads(line)["genes"]) for lines in logs for line in lines]
    assert len(genes) == 24 == len(set(genes)), [len(lines) for lines in logs]  # together the budget, no config twice
    study = optuna.load_study(study_name="lorasearch", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 24  # the study saw each config
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


# --------------------------------------------------------------------------- bad input
def test_an_unreachable_ray_address_is_one_line(capsys):
    pytest.importorskip("ray")
    with pytest.raises(SystemExit) as exc:
        main(["search", "--model", "tiny-llama", "--space", SPACE, "--out", "x", "--backend", "ray",
              "--ray-address", "127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert err.startswith("error: --ray-address 127.0.0.1:9: cannot reach it") and "ray start --head" in err


def test_more_gpu_workers_than_gpus_is_refused(monkeypatch):
    with pytest.raises(LoraSearchError, match="each worker takes a GPU but this machine has 2"):
        plan_workers(3, gpus=2, cpus=16)
    assert plan_workers(None, gpus=2, cpus=16) == plan_workers(2, gpus=2, cpus=16)
    assert plan_workers(None, gpus=0, cpus=2).count == 2 and plan_workers(2, gpus=0, cpus=2).threads == 1
    monkeypatch.setattr("lorasearch.search.processes.visible_gpus", lambda: ["0"])
    with pytest.raises(LoraSearchError, match="--workers 2: each worker takes a GPU but this machine has 1"):
        ProcessBackend(SurrogateRecipe(), 2)


def test_fingerprint_tells_adapters_and_spaces_apart():
    def net(seed=0, space=SPACE):
        return SuperNetwork(tiny_model("llama"), space, seed=seed)

    same = net().fingerprint()
    assert net().fingerprint() == same
    assert net(seed=1).fingerprint() != same  # other adapter weights
    assert net(space=str(ROOT / "search_spaces" / "llama-shears.yaml")).fingerprint() != same


def test_a_worker_with_another_super_network_is_refused():
    space = make_space()
    with ProcessBackend(SurrogateRecipe(fingerprint="0123abcd"), 1, expected_fingerprint="feedbeef") as backend:
        with pytest.raises(LoraSearchError, match=r"fingerprint 0123abcd\) differs from the driver's \(feedbeef\)"):
            list(backend.evaluate([space.max()]))


def test_a_ray_worker_with_another_super_network_is_refused(ray_local):
    from lorasearch.search.ray_backend import RayBackend

    with pytest.raises(LoraSearchError, match=r"Ray worker .* differs from the driver's \(feedbeef\)"):
        RayBackend(SurrogateRecipe(fingerprint="0123abcd"), 1, expected_fingerprint="feedbeef")


@pytest.mark.parametrize(
    "settings, expected",
    [
        (BackendSettings("cluster"), "unknown 'cluster'"),
        (BackendSettings("local", 4), "the local backend has one"),
        (BackendSettings("processes", 0), "must be 1 or more"),
        (BackendSettings("processes", ray_address="auto"), "only the ray backend"),
    ],
)
def test_bad_backend_settings(settings, expected):
    with pytest.raises(LoraSearchError, match=expected):
        settings.check()


def test_storage_needs_an_optuna_strategy(tmp_path):
    with pytest.raises(LoraSearchError, match="the nsga2 strategy cannot share a study"):
        replace(tiny_run(), storage=f"sqlite:///{tmp_path / 's.db'}").run(tmp_path / "r")


def test_a_shared_study_run_resumes_without_losing_or_repeating(tmp_path):
    import optuna

    from lorasearch.search import Objective

    url, out, space = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "run", make_space()
    settings = SearchSettings(strategy="tpe", budget=20, population=4, seed=2)
    s, seen = Surrogate(space), []

    def crashing(config):  # the 11th evaluation never finishes: a crash in the middle of a batch
        if len(seen) == 10:
            raise KeyboardInterrupt
        seen.append(config)
        return s.accuracy(config)

    with pytest.raises(KeyboardInterrupt):
        run_search(space, [Objective("accuracy", "max", crashing, bounds=(1.0, 0.0)), objectives(s)[1]], settings,
                   out_dir=out, optuna_storage=url)
    again = Surrogate(space)
    result = run_search(space, objectives(again), settings, out_dir=out, resume=True, optuna_storage=url)
    assert len(result.table) == 20 == result.table["genes"].nunique() and again.calls == 10
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == 20
    study = optuna.load_study(study_name="lorasearch", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 20
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_the_ray_backend_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(LoraSearchError, match=r"Ray is not installed; fix: pip install 'lorasearch\[ray\]'"):
        BackendSettings("ray").check()
