"""Run the README's command-line tour exactly as written and time each command.

The tour is the first ``bash`` block after the "A tour of the command line" heading. Each command runs from the
repository root, in order, with the ``lorasearch`` next to this interpreter; the outputs it names
(``runs/nls``, ``runs/search``, ...) are removed first so that the tour starts from nothing. The
results (each command, its wall seconds, its last line of output) go to ``results/tour.{json,md}``;
the README's comments quote those seconds.

    python benchmarks/bench_tour.py            # run it (tens of minutes on 2 CPU cores)
    python benchmarks/bench_tour.py --list     # print the commands only
    python benchmarks/bench_tour.py --from 10  # rerun from the 10th command on, keeping the earlier times
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, environment, environment_markdown, write_results

README = ROOT / "README.md"
TOUR_HEADING = "## A tour of the command line"


def tour_commands(readme: Path = README) -> list[list[str]]:
    """The tour's commands as argument lists: comments dropped, continuation lines joined."""
    text = readme.read_text()
    start = text.index(TOUR_HEADING)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if block is None:
        raise SystemExit(f"{readme}: no bash block after {TOUR_HEADING!r}")
    joined = block.group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c for c in commands if c]


def outputs_of(commands: list[list[str]]) -> list[Path]:
    """The paths the tour writes (``--out``/``-o`` values), to clear before it runs; all under ``runs/``."""
    paths = []
    for argv in commands:
        for flag, value in zip(argv, argv[1:]):
            if flag in ("--out", "-o"):
                path = (ROOT / value).resolve()
                if not path.is_relative_to(ROOT / "runs"):
                    raise SystemExit(f"{README}: the tour writes {value}; fix: keep the tour's outputs under runs/")
                paths.append(path)
    return paths


def run_tour(commands: list[list[str]]) -> list[dict]:
    """Run each command from the repository root; stop at the first failure."""
    exe = Path(sys.executable).with_name("lorasearch")
    rows = []
    for argv in commands:
        started = time.perf_counter()
        done = subprocess.run([str(exe), *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        rows.append({"command": shlex.join(argv), "seconds": round(seconds, 1), "rc": done.returncode,
                     "last_line": lines[-1].strip() if lines else ""})
        print(f"{seconds:7.1f} s  rc {done.returncode}  {shlex.join(argv)}", flush=True)
        if done.returncode != 0:
            print("\n".join(lines[-20:]), file=sys.stderr)
            break
    return rows


def earlier_rows(commands: list[list[str]], start: int) -> list[dict]:
    """The stored rows of the commands before ``start``, which must be the same commands, all successful."""
    if start == 1:
        return []
    stored = RESULTS / "tour.json"
    rows = json.loads(stored.read_text())["rows"][: start - 1] if stored.is_file() else []
    wanted = [shlex.join(c) for c in commands[: start - 1]]
    if [r["command"] for r in rows] != wanted or any(r["rc"] != 0 for r in rows):
        raise SystemExit(f"{stored}: does not hold successful runs of the tour's first {start - 1} commands; "
                         "fix: run the whole tour (no --from)")
    return rows


def markdown(data: dict) -> str:
    lines = ["# The README's command-line tour, timed", "", environment_markdown(data["environment"]),
             f"Total: {sum(r['seconds'] for r in data['rows']):.0f} s; "
             f"{'every command succeeded' if all(r['rc'] == 0 for r in data['rows']) else 'a command FAILED'}"
             + (f"; commands 1-{data['from'] - 1} were timed by the previous run" if data.get("from", 1) > 1 else "")
             + ".", "",
             "| s | command | last line |", "|---:|---|---|"]
    for r in data["rows"]:
        last = r["last_line"].replace("|", "\\|")[:140]
        lines.append(f"| {r['seconds']:.0f} | `{r['command']}` | {last if r['rc'] == 0 else 'rc ' + str(r['rc'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    p.add_argument("--from", dest="start", type=int, default=1,
                   help="start at this command (1-based), over the outputs and times of the last run's earlier ones")
    args = p.parse_args()
    commands = tour_commands()
    if args.list:
        print("\n".join(shlex.join(c) for c in commands))
        return
    earlier = earlier_rows(commands, args.start)
    for path in outputs_of(commands[args.start - 1:]):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    rows = earlier + run_tour(commands[args.start - 1:])
    data = {"environment": environment(), "rows": rows, "from": args.start}
    json_path, md_path = write_results("tour", data, markdown(data))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
