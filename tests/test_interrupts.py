"""Ctrl-C and SIGTERM on ``search`` and ``train``: exit 130 / 143, one line naming the command that
resumes, and a run that resumes to what an uninterrupted one ends with.

The runs are real ``lorasearch`` processes on a tiny model; each logged record is followed by a
short sleep so that the signal lands in the middle of the run, not before or after it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_SPACE, run_cli, wait_for_lines
from safetensors.torch import load_file

from lorasearch.data import synthetic_task
from lorasearch.io import read_jsonl

SLOW_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import lorasearch.search.rundir as rundir, lorasearch.train.trainer as trainer
    for module in (rundir, trainer):
        def append(path, record, real=module.append_jsonl):
            real(path, record)
            time.sleep(0.3)
        module.append_jsonl = append
    from lorasearch.cli import main
    main(sys.argv[1:])
""")
TRAIN = ["--model", "tiny-llama", "--space", ROOT / "search_spaces" / "llama-shears.yaml", "--steps", "8",
         "--batch-size", "4", "--checkpoint-every", "3", "--max-length", "64", "--lr", "3e-3"]


def started(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # A shell's background job (`pytest ... &`) ignores SIGINT, and so would the child: give it the
    # default disposition a terminal's foreground process has, so that Python raises KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stopped(proc: subprocess.Popen, log: Path, lines: int, sig: int) -> tuple[int, str]:
    """Send ``sig`` once ``log`` has ``lines`` lines; return the exit status and the last line of stderr."""
    wait_for_lines(log, lines, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.strip().splitlines()[-1]


def resume_command(line: str) -> list[str]:
    """The arguments after ``lorasearch`` in the line's ``resume with: lorasearch ...``."""
    command = line.split("resume with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[0] == "lorasearch"
    return argv[1:]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "val.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in synthetic_task(24, seed=5)))
    return path


def search_args(task: Path, out: Path) -> list[object]:
    return ["search", "--model", "tiny-llama", "--space", TINY_SPACE, "--task", task, "--limit", "8",
            "--budget", "12", "--population", "4", "--out", out]


@pytest.mark.slow
def test_ctrl_c_on_a_search_exits_130_and_names_the_resume_that_ends_as_an_uninterrupted_run(task_file, tmp_path):
    run = tmp_path / "run"
    code, line = stopped(started(*search_args(task_file, run)), run / "evaluations.jsonl", 3, signal.SIGINT)
    assert code == 130, line
    assert line == f"interrupted; every finished step is kept; resume with: lorasearch search --resume {run}"
    before = read_jsonl(run / "evaluations.jsonl")
    assert 3 <= len(before) < 12

    run_cli(*resume_command(line))
    after = read_jsonl(run / "evaluations.jsonl")
    assert after[: len(before)] == before  # nothing finished was lost or redone
    whole = tmp_path / "whole"
    run_cli(*search_args(task_file, whole))
    assert [(r["eval_id"], r["genes"], r["objectives"]) for r in after] == \
        [(r["eval_id"], r["genes"], r["objectives"]) for r in read_jsonl(whole / "evaluations.jsonl")]


@pytest.mark.slow
def test_sigterm_on_a_training_exits_143_and_names_the_resume_that_ends_as_an_uninterrupted_run(tmp_path):
    out = tmp_path / "train"
    code, line = stopped(started("train", *TRAIN, "--out", out), out / "train_log.jsonl", 4, signal.SIGTERM)
    assert code == 143, line
    assert line.startswith("terminated (SIGTERM); every finished step is kept; resume with: lorasearch train ")
    argv = resume_command(line)
    assert argv[-1] == "--resume" and argv[:-1] == ["train", *map(str, TRAIN), "--out", str(out)]
    assert len(read_jsonl(out / "train_log.jsonl")) < 8

    run_cli(*argv)
    whole = tmp_path / "whole"
    run_cli("train", *TRAIN, "--out", whole)
    assert read_jsonl(out / "train_log.jsonl") == read_jsonl(whole / "train_log.jsonl")
    x, y = (load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (out, whole))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_ctrl_c_before_the_run_is_saved_says_to_start_again(tmp_path, monkeypatch, capsys):
    import lorasearch.runs.searching as searching
    from lorasearch.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(searching, "build_network", interrupted)  # Ctrl-C while the model loads
    args = ["search", "--model", "tiny-llama", "--space", str(TINY_SPACE), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted before the run was saved; start it again with: lorasearch {shlex.join(args)}"


def test_an_interrupted_command_without_a_run_still_exits_130(monkeypatch, capsys):
    import lorasearch.runs as runs
    from lorasearch.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "import_space_file", interrupted)
    with pytest.raises(SystemExit) as done:
        main(["space", "import", str(ROOT / "tests" / "fixtures" / "reference" / "sqft_elastic_adapter_config.json")])
    assert done.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
