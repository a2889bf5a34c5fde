"""The README's command-line tour works as written: its files exist and its options are real.

``benchmarks/bench_tour.py`` runs the tour itself on SmolLM2 (tens of minutes) and times it; this
test keeps the text from drifting away from the CLI in the meantime.
"""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT

from lorasearch.cli import main

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tour import outputs_of, tour_commands  # noqa: E402

COMMANDS = tour_commands()
SUBCOMMANDS_WITH_TWO_WORDS = ("space",)


def subcommand(argv: list[str]) -> list[str]:
    return argv[1:3] if argv[1] in SUBCOMMANDS_WITH_TWO_WORDS else argv[1:2]


def test_the_tour_covers_the_whole_job():
    used = {" ".join(subcommand(c)) for c in COMMANDS}
    assert {"space show", "space import", "train", "eval", "cost", "search", "plot", "report", "export"} <= used


def test_the_tour_names_files_that_exist():
    written = set(outputs_of(COMMANDS))
    for argv in COMMANDS:
        for arg in argv:
            if arg.startswith(("search_spaces/", "tests/")):
                assert (ROOT / arg).is_file(), f"{arg} is named in the README's tour but does not exist"
    assert all(p.is_relative_to(ROOT / "runs") for p in written)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_every_option_of_the_tour_is_an_option_of_its_command(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main([*subcommand(argv), "--help"])
    except SystemExit as done:
        assert done.code in (0, None)
    help_text = capsys.readouterr().out
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in help_text, f"README tour: `{' '.join(subcommand(argv))}` has no option {flag}"
