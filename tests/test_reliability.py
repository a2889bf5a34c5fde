"""Run folders that survive crashes and concurrent use, one test per defect of issue 14, met as a
user meets it: the CLI, a real run directory, a real ``kill -9`` where a kill is the cause.

1. a torn last line of evaluations.jsonl / train_log.jsonl: cut off on resume, tolerated by readers;
2. a second process on a run directory (search or train) is refused, naming the holder;
3. a resume notices a changed adapter, task file, model, evaluator or space (``--force`` for the rest);
4. usage errors and undecodable files end in one ``error:`` line naming the option or the file;
5. a JSON space with a repeated group and an adapter config whose ``r`` contradicts its tensors;
6. training resume is exact when killed before the first checkpoint or between its two renames;
7. a hub name without a network fails at once in one line; a plain folder as --task says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, TINY_SPACE, cli_error, randomize_adapters, run_cli, wait_for_lines
from safetensors.torch import load_file

from lorasearch.cli import main
from lorasearch.data import synthetic_task
from lorasearch.errors import LoraSearchWarning
from lorasearch.io import LOCK_FILE, read_jsonl
from lorasearch.models.loading import tiny_model
from lorasearch.network.supernet import SuperNetwork

SHEARS = ROOT / "search_spaces" / "llama-shears.yaml"
TRAIN = ["--model", "tiny-llama", "--space", SHEARS, "--steps", "10", "--batch-size", "4", "--checkpoint-every", "4",
         "--max-length", "64", "--lr", "3e-3"]
LOG, TRAIN_LOG = "evaluations.jsonl", "train_log.jsonl"

# A CLI run in a child process, with one hook that kills it (SIGKILL) at a chosen moment.
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import lorasearch.search.rundir as rundir, lorasearch.train.trainer as train
    hook, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls = [0]

    def wrap(module):
        real = module.append_jsonl
        def append(path, record):
            calls[0] += 1
            if hook == "torn" and calls[0] == n:  # half a line on disk, then killed
                line = json.dumps(record)
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, record)
            if hook == "after" and calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            if hook == "slow":
                time.sleep(n / 1000)
        module.append_jsonl = append

    wrap(rundir)
    wrap(train)
    if hook in ("rename", "renamed"):  # killed just before (after) the checkpoint's last rename, the n-th time
        real_rename, renames = Path.rename, [0]
        def rename(self, target):
            if self.name == "checkpoint.tmp":
                renames[0] += 1
                if renames[0] == n and hook == "rename":
                    os.kill(os.getpid(), signal.SIGKILL)
            moved = real_rename(self, target)
            if self.name == "checkpoint.tmp" and renames[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return moved
        Path.rename = rename
    from lorasearch.cli import main
    main(args)
""")


def child(hook: str, n: int, *args: object) -> subprocess.Popen:
    """``lorasearch ARGS`` in a child process with ``hook`` (its stderr goes to ``proc.err_file``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    err = tempfile.NamedTemporaryFile("w+", suffix=".err", delete=False)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, hook, str(n), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    proc.err_file = Path(err.name)  # type: ignore[attr-defined]
    return proc


def finished(proc: subprocess.Popen, returncode: int) -> None:
    proc.wait(timeout=300)
    err = proc.err_file.read_text()  # type: ignore[attr-defined]
    proc.err_file.unlink()  # type: ignore[attr-defined]
    assert proc.returncode == returncode, err[-2000:]


def killed(hook: str, n: int, *args: object) -> None:
    finished(child(hook, n, *args), -9)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def errors_of(capsys, *args: object) -> list[str]:
    """Run the CLI, expect a non-zero exit; return stderr's lines."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err.strip().splitlines()


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "val.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in synthetic_task(24, seed=5)))
    return path


def search_args(task: Path, out: Path, budget: int = 12, *extra: object, space: Path = TINY_SPACE) -> list[object]:
    return ["search", "--model", "tiny-llama", "--space", space, "--task", task, "--limit", "8",
            "--budget", budget, "--population", "4", "--out", out, *extra]


@pytest.fixture(scope="module")
def full_training(tmp_path_factory) -> Path:
    """The uninterrupted training every killed one must end equal to."""
    out = tmp_path_factory.mktemp("full") / "train"
    run_cli("train", *TRAIN, "--out", out)
    return out


def assert_same_training(a: Path, b: Path) -> None:
    assert read_jsonl(a / TRAIN_LOG) == read_jsonl(b / TRAIN_LOG)
    x, y = (load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------- 1. torn logs
def test_torn_line_of_a_jsonl_log_is_cut_and_a_corrupt_middle_line_named(tmp_path):
    log = tmp_path / "log.jsonl"
    whole, torn = b'{"a": 1}\n{"a": 2}\n', b'{"a": 3, "b"'
    log.write_bytes(whole + torn)
    with pytest.warns(LoraSearchWarning, match=r"log.jsonl: the last line is torn \(12 bytes .*left out.*2 complete"):
        assert read_jsonl(log) == [{"a": 1}, {"a": 2}]
    assert log.read_bytes() == whole + torn  # a reader changes nothing
    with pytest.warns(LoraSearchWarning, match=r"torn \(12 bytes.*cut off"):
        read_jsonl(log, repair=True)
    assert log.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    log.write_bytes(b'{"a": 1}\n{"a": 2}\n\x00\x00\x00\n')  # a final line written whole but garbled
    with pytest.warns(LoraSearchWarning, match=r"torn \(4 bytes"):
        assert len(read_jsonl(log, repair=True)) == 2
    log.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(Exception, match=r"log.jsonl: line 2: not a JSON record .*fix: restore the file, or delete line 2"):
        read_jsonl(log)


@pytest.mark.slow
def test_a_search_killed_in_the_middle_of_a_write_resumes_without_losing_or_repeating(task_file, tmp_path, capsys):
    run = tmp_path / "run"
    killed("torn", 7, *search_args(task_file, run))
    assert not (run / LOG).read_text().endswith("\n")  # six records and half of the seventh
    run_cli("report", run)  # the reader tolerates the torn line and says so
    assert "the last line is torn" in capsys.readouterr().err
    run_cli("search", "--resume", run)
    err = capsys.readouterr().err
    assert f"{run / LOG}: the last line is torn" in err and "cut off; the 6 complete records" in err
    records = [json.loads(line) for line in lines(run / LOG)]
    assert len(records) == 12 == len({tuple(r["genes"]) for r in records})  # the torn one evaluated again
    assert sorted(r["eval_id"] for r in records) == list(range(12))
    run_cli("search", "--resume", run)  # a second resume and the reader see a whole log
    run_cli("report", run)
    assert "torn" not in capsys.readouterr().err and len(lines(run / LOG)) == 12


@pytest.mark.slow
def test_a_training_killed_in_the_middle_of_a_log_write_resumes_exactly(full_training, tmp_path, capsys):
    out = tmp_path / "train"
    killed("torn", 3, "train", *TRAIN, "--out", out)  # before the first checkpoint (step 4)
    run_cli("train", *TRAIN, "--out", out, "--resume")
    assert f"{out / TRAIN_LOG}: the last line is torn" in capsys.readouterr().err
    assert_same_training(full_training, out)


# ----------------------------------------------------------------------------- 2. locking
@pytest.mark.slow
def test_a_second_process_on_a_search_directory_is_refused(task_file, tmp_path, capsys):
    run = tmp_path / "run"
    first = child("slow", 400, *search_args(task_file, run, 8))  # 0.4 s per logged evaluation
    try:
        wait_for_lines(run / LOG, 1, first)
        for args in (["search", "--resume", run], search_args(task_file, run, 8, "--seed", "7")):
            error = cli_error(capsys, *args)
            assert f"{run}: in use by process {first.pid}" in error and LOCK_FILE in error and "fix:" in error
    finally:
        finished(first, 0)
    records = [json.loads(line) for line in lines(run / LOG)]
    assert len(records) == 8 == len({tuple(r["genes"]) for r in records})
    run_cli("search", "--resume", run)  # the holder is gone: the folder is free
    assert len(lines(run / LOG)) == 8


@pytest.mark.slow
def test_a_second_process_on_a_training_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "train"
    first = child("slow", 300, "train", *TRAIN, "--out", out)
    try:
        wait_for_lines(out / TRAIN_LOG, 1, first)
        for extra in (["--resume"], [], ["--overwrite"]):
            error = cli_error(capsys, "train", *TRAIN, "--out", out, *extra)
            assert f"{out}: in use by process {first.pid}" in error
    finally:
        finished(first, 0)
    assert [r["step"] for r in read_jsonl(out / TRAIN_LOG)] == list(range(1, 11))


@pytest.mark.slow
def test_a_lock_is_released_when_its_holder_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from lorasearch.io import FolderLock
        FolderLock({str(tmp_path / 'run')!r}).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == -9 and (tmp_path / "run" / LOCK_FILE).is_file()
    from lorasearch.io import FolderLock

    with FolderLock(tmp_path / "run"):  # the kernel dropped the dead holder's lock
        pass


# ----------------------------------------------------------------------------- 3. fingerprints
@pytest.fixture
def adapter_run(task_file, tmp_path):
    """A finished search over a saved adapter (random tensors) and a copy of the task file."""
    adapter = saved_adapter(tmp_path / "adapter", seed=1)
    task = Path(shutil.copy(task_file, tmp_path / "task.jsonl"))
    run = tmp_path / "run"
    run_cli("search", "--model", "tiny-llama", "--adapter", adapter, "--task", task, "--limit", "8",
            "--budget", "4", "--population", "4", "--out", run)
    return run, adapter, task


def saved_adapter(path: Path, seed: int) -> Path:
    net = randomize_adapters(SuperNetwork(tiny_model("llama"), TINY_SPACE), seed=seed, scale=0.05)
    return net.save_adapter(path)


@pytest.mark.slow
def test_resume_refuses_an_adapter_rewritten_in_place_unless_forced(adapter_run, tmp_path, capsys):
    run, adapter, _ = adapter_run
    saved_adapter(tmp_path / "other", seed=2)
    shutil.copy(tmp_path / "other" / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    error = cli_error(capsys, "search", "--resume", run, last_line=True)
    assert f"{run / 'run.yaml'}: the adapter's tensors changed since the run started" in error
    assert "--force" in error
    run_cli("search", "--resume", run, "--force")
    stored = yaml.safe_load((run / "run.yaml").read_text())
    assert stored["forced"] and "adapter's tensors changed" in stored["forced"][0]
    run_cli("search", "--resume", run)  # the new fingerprint is the one stored now


@pytest.mark.slow
def test_export_refuses_an_adapter_rewritten_since_the_search(adapter_run, tmp_path, capsys):
    run, adapter, _ = adapter_run
    run_cli("export", run, "--pick", "max", "--format", "peft", "--out", tmp_path / "before")
    original = tmp_path / "original"
    shutil.copytree(adapter, original)
    saved_adapter(tmp_path / "other", seed=2)
    shutil.copy(tmp_path / "other" / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    error = cli_error(capsys, "export", run, "--pick", "max", "--format", "peft", "--out", tmp_path / "after",
                      last_line=True)
    assert f"{run / 'run.yaml'}: the adapter's tensors changed since the run started" in error
    assert "--adapter" in error and not (tmp_path / "after").exists()
    run_cli("export", run, "--pick", "max", "--format", "peft", "--adapter", original, "--out", tmp_path / "chosen")
    assert (tmp_path / "chosen" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_resume_refuses_an_edited_task_file(adapter_run, capsys):
    run, _, task = adapter_run
    records = [json.loads(line) for line in lines(task)]
    records[3]["instruction"] += " (edited)"
    task.write_text("".join(json.dumps(r) + "\n" for r in records))
    error = cli_error(capsys, "search", "--resume", run, last_line=True)
    assert "the task's records changed since the run started" in error


@pytest.mark.slow
def test_resume_refuses_a_changed_model_folder_and_evaluator(task_file, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    model = tiny_model("llama")
    model.save_pretrained(folder)
    from lorasearch.models.loading import byte_tokenizer

    byte_tokenizer().save_pretrained(folder)
    run = tmp_path / "run"
    run_cli("search", "--model", folder, "--space", TINY_SPACE, "--task", task_file, "--limit", "8",
            "--budget", "4", "--population", "4", "--out", run)
    original = (folder / "config.json").read_text()
    (folder / "config.json").write_text(json.dumps({**json.loads(original), "rms_norm_eps": 1e-5}))
    assert "the base model changed since the run started" in cli_error(capsys, "search", "--resume", run, last_line=True)
    (folder / "config.json").write_text(original)
    run_cli("search", "--resume", run)  # restored: resumes
    # an upgrade that changed the prompt the evaluator scores with
    from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator

    defaults = dict(MultipleChoiceEvaluator.__init__.__kwdefaults__)
    monkeypatch.setattr(MultipleChoiceEvaluator.__init__, "__kwdefaults__", {**defaults, "template": "Q: {question}\nA:"})
    assert "the evaluator's settings changed" in cli_error(capsys, "search", "--resume", run, last_line=True)


@pytest.mark.slow
def test_a_changed_space_is_refused_even_when_forced(task_file, tmp_path, capsys):
    space = Path(shutil.copy(TINY_SPACE, tmp_path / "space.yaml"))
    run = tmp_path / "run"
    run_cli(*search_args(task_file, run, 4, space=space))
    space.write_text(space.read_text().replace("rank: [8, 4]", "rank: [8, 6, 4]", 1))
    error = cli_error(capsys, "search", "--resume", run, "--force", last_line=True)
    assert "the search space changed since the run started" in error and "--force cannot" in error


@pytest.mark.slow
def test_training_resume_refuses_an_edited_task_file_unless_forced(task_file, tmp_path, capsys):
    task = Path(shutil.copy(task_file, tmp_path / "task.jsonl"))
    out = tmp_path / "train"
    args = ["train", "--model", "tiny-llama", "--space", SHEARS, "--task", task, "--steps", "2", "--batch-size", "2",
            "--max-length", "64", "--out", out]
    run_cli(*args)
    task.write_text(task.read_text().replace("answer1", "answer2", 1))
    error = cli_error(capsys, *args, "--resume", last_line=True)
    assert f"{out / 'train_run.yaml'}: the task's records changed since the run started" in error and "--force" in error
    run_cli(*args, "--resume", "--force")
    assert "resumed with --force" in yaml.safe_load((out / "train_run.yaml").read_text())["forced"][0]


# ---------------------------------------------------------------- 4. usage errors and decoding
def test_usage_errors_and_undecodable_files_name_the_option_or_file(tmp_path, capsys):
    latin = tmp_path / "space.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    task = tmp_path / "task.json"
    task.write_bytes(b'[{"instruction": "\xff"}]')
    not_json = tmp_path / "config.json"
    not_json.write_text("attn: 8\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("run: !!python/object/apply:os.system ['echo owned']\n")
    cases = [
        (["search", "--bogus"], "--bogus"),
        (["search", "--budget", "many"], "--budget"),
        (["space", "show", latin], f"{latin}: not UTF-8"),
        (["eval", "--model", "tiny-llama", "--space", TINY_SPACE, "--task", task], f"{task}: not UTF-8"),
        (["eval", "--model", "tiny-llama", "--space", TINY_SPACE, "--config", not_json], f"{not_json}: line 1"),
        (["search", "--resume", run], f"{run / 'run.yaml'}: line 1: malformed YAML"),
        (["report", run], f"{run / 'run.yaml'}: line 1: malformed YAML"),
    ]
    for args, named in cases:
        err = errors_of(capsys, *args)
        assert len(err) <= 3 and err[0].startswith("error: ") and named in err[0], (args, err)


def alias_bomb(levels: int) -> str:
    """Nested lists, each holding the one before it nine times: 9**levels values from 8 * levels aliases."""
    value = "&a0 [x, x, x, x, x, x, x, x, x]"
    for i in range(1, levels + 1):
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return value


@pytest.mark.parametrize("levels, problem", [(10, "expand it to more than 100000 values"), (13, "more than 100 aliases")])
def test_a_yaml_alias_bomb_fails_fast(tmp_path, capsys, levels, problem):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"name: bomb\nadapter: {{rank: 8}}\ndescription: {alias_bomb(levels)}\n"
                    "groups: {up: {modules: [mlp.up_proj], rank: [8, 4]}}\n")
    error = cli_error(capsys, "space", "show", bomb)
    assert f"{bomb}: line 3: malformed YAML" in error and problem in error


# ------------------------------------------------------------------- 5. inconsistent input
def test_a_json_space_with_a_repeated_group_is_refused(tmp_path, capsys):
    space = tmp_path / "space.json"
    group = '{"modules": ["self_attn.q_proj"], "rank": [8, 4]}'
    space.write_text('{"name": "x", "adapter": {"rank": 8}, "per_layer": "model.layers.{i}", '
                     f'"groups": {{"attn": {group}, "attn": {group}}}}}')
    error = cli_error(capsys, "space", "show", space)
    assert f"{space}" in error and "'attn' appears twice" in error


def test_an_adapter_config_whose_rank_contradicts_its_tensors_is_refused_as_peft_does(tmp_path, capsys):
    from peft import PeftModel

    adapter = saved_adapter(tmp_path / "adapter", seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    error = cli_error(capsys, "eval", "--model", "tiny-llama", "--adapter", adapter, "--limit", "4")
    assert f"{adapter / 'adapter_config.json'}: r says rank 4" in error and "tensors have rank 8" in error
    with pytest.raises(RuntimeError, match="size mismatch"):  # stock PEFT refuses the folder too
        PeftModel.from_pretrained(tiny_model("llama"), adapter)


# --------------------------------------------------------------- 6. exact training resume
@pytest.mark.slow
def test_training_killed_before_its_first_checkpoint_resumes_exactly(full_training, tmp_path):
    out = tmp_path / "train"
    killed("after", 3, "train", *TRAIN, "--out", out)  # steps 1-3 logged, no checkpoint yet
    assert len(lines(out / TRAIN_LOG)) == 3 and not (out / "checkpoint").exists()
    run_cli("train", *TRAIN, "--out", out, "--resume")
    assert_same_training(full_training, out)


@pytest.mark.slow
def test_training_killed_between_the_checkpoint_renames_resumes_from_it(full_training, tmp_path, monkeypatch):
    out = tmp_path / "train"
    killed("rename", 2, "train", *TRAIN, "--out", out)  # the step-8 checkpoint is whole but not in place
    assert not (out / "checkpoint").exists() and (out / "checkpoint.tmp" / "state.json").is_file()
    import lorasearch.train.trainer as train

    logged, append = [], train.append_jsonl
    monkeypatch.setattr(train, "append_jsonl", lambda path, record: (logged.append(record["step"]), append(path, record)))
    run_cli("train", *TRAIN, "--out", out, "--resume")
    assert logged == [9, 10]  # resumed from the step-8 checkpoint, not from step 0
    assert {p.name for p in out.iterdir()} >= {"checkpoint"} and not (out / "checkpoint.tmp").exists()
    assert_same_training(full_training, out)


@pytest.mark.slow
def test_training_killed_before_the_old_checkpoint_is_removed_resumes_exactly(full_training, tmp_path):
    out = tmp_path / "train"
    killed("renamed", 2, "train", *TRAIN, "--out", out)  # step-8 checkpoint in place, step-4 one beside it
    assert (out / "checkpoint" / "state.json").is_file() and (out / "checkpoint.old").is_dir()
    run_cli("train", *TRAIN, "--out", out, "--resume")  # its next checkpoint must not trip over the leftover
    assert not (out / "checkpoint.old").exists()
    assert_same_training(full_training, out)


# ------------------------------------------------------------------------ 7. hub and folders
def no_hub() -> None:
    from lorasearch.models.hub import hub_reachable

    if hub_reachable():
        pytest.skip("this machine reaches the Hugging Face hub")


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_name_without_a_network_fails_at_once_in_one_line(capfd, monkeypatch, offline):
    no_hub()
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["cost", "--model", "someone/not-here", "--space", str(TINY_SPACE)])
    err = capfd.readouterr().err.strip().splitlines()  # the file descriptor: hub retries log there
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: someone/not-here: not a local file or folder") and "HF_HUB_OFFLINE" in err[0]


@pytest.mark.slow
def test_the_installed_command_gives_up_on_an_unreachable_hub_at_once(tmp_path):
    no_hub()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-m", "lorasearch.cli", "search", "--model", "someone/not-here",
                           "--space", str(TINY_SPACE), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=60, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Retry" not in proc.stderr, proc.stderr
    assert "someone/not-here: not a local file or folder, the Hugging Face hub" in proc.stderr


def test_a_plain_folder_as_task_says_it_is_no_task_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    error = cli_error(capsys, "eval", "--model", "tiny-llama", "--space", TINY_SPACE, "--task", tmp_path)
    assert f"{tmp_path}: a folder" in error and "pip install" not in error and ".jsonl" in error


def test_a_forked_child_does_not_inherit_the_lock(tmp_path):
    from lorasearch.io import FolderLock

    with FolderLock(tmp_path / "run"):
        pid = os.fork()
        if pid == 0:  # the child must not believe it holds the parent's lock
            try:
                FolderLock(tmp_path / "run").acquire()
                os._exit(1)
            except Exception as exc:  # noqa: BLE001
                os._exit(0 if f"in use by process {os.getppid()}" in str(exc) else 2)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_run_directory_of_the_earlier_layout_resumes_and_gains_fingerprints(tmp_path):
    from helpers import synthetic_search

    out = tmp_path / "run"
    synthetic_search(out, budget=16)
    document = yaml.safe_load((out / "run.yaml").read_text())
    space = document.pop("fingerprints")["space"]
    document["run"] = {**document["run"], "space_fingerprint": space}  # where earlier versions kept it
    (out / "run.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = synthetic_search(out, budget=16, resume=True)
    assert len(result.table) == 16
    assert yaml.safe_load((out / "run.yaml").read_text())["fingerprints"] == {"space": space}


def test_runs_started_before_a_setting_existed_still_resume(tmp_path, capsys):
    """A setting added to the settings dataclasses since a run began does not stop it resuming."""
    out = tmp_path / "run"
    run_cli("search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8", "--budget", "8",
            "--population", "4", "--out", out)
    document = yaml.safe_load((out / "run.yaml").read_text())
    for section, key in (("network", "device"), ("network", "adapter_dtype"), ("task", "max_batch_tokens")):
        del document["run"][section][key]  # as a run of an earlier version recorded it
    del document["search"]["racing"]
    (out / "run.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    run_cli("search", "--resume", out)  # not refused as "the run changed"
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == 8  # and nothing evaluated again
