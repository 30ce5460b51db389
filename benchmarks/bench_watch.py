"""What the process watch costs: generated suites run with the plugin on and off, alternating.

Two suites are generated in a temporary directory:

- ``trivial``: 2000 tests that do nothing (the watch's fixed cost per test);
- ``processes-METHOD``: 200 tests that each start and join a ``multiprocessing.Process``, one
  suite per start method (fork, spawn, forkserver; ``--methods`` picks them).

Each is run ``--rounds`` times with the plugin and with ``-p no:mpcheck``, alternating so that
both see the same machine, and the ratio of the medians of the wall times is printed, and that of
the best runs (the least disturbed); then the same for the CPU time (user + system) of pytest and
its children, which a busy machine disturbs less than the wall time; then the same for the
minor page faults of pytest and its children, which repeat from run to run whatever the machine
does: after a fork, each page that the parent or the child writes faults once (and is copied for
the child), so they count what the watch costs a forked child and the process that forked it.

``--instructions`` adds, per suite, one run each way under valgrind (``cachegrind`` without its
cache simulation, every process followed): the instructions that pytest and the processes it
exec'd executed (a forked child's count goes on from its parent's, so forked children are left
out: the fork suite counts the pytest process alone). They barely move between runs, so they
show what a change did on a machine whose times drift; a run takes some twenty times as long as
without valgrind (a spawned child's start under valgrind, over a second).

``--python`` runs the suites with another interpreter, such as that of a virtual environment where
the plugin was installed with ``pip install .`` (pytest loads an installed plugin's modules
through its assertion rewriter, some 1 ms each at every start; this repository's editable install,
a ``src`` layout, is loaded the same way).

Usage: ``python benchmarks/bench_watch.py [--rounds N] [--methods fork,spawn,forkserver]
[--instructions] [--python PYTHON]``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIVIAL = """
import pytest

@pytest.mark.parametrize("n", range(2000))
def test_trivial(n):
    assert n >= 0
"""

PROCESSES = """
import multiprocessing
import pytest

def work():
    pass

@pytest.mark.parametrize("n", range(200))
def test_start_join(n):
    p = multiprocessing.get_context("METHOD").Process(target=work)
    p.start()
    p.join()
    assert p.exitcode == 0
"""


def _run(directory: Path, python: str, plugin_on: bool) -> tuple[float, float, float]:
    """One run of the suite in ``directory``: its wall time and CPU time, in seconds, and its
    minor page faults."""
    command = _command(python, plugin_on)
    env = _environment()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark suite failed:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, float(after.ru_minflt - before.ru_minflt)


def _command(python: str, plugin_on: bool) -> list[str]:
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    return command if plugin_on else [*command, "-p", "no:mpcheck"]


def _environment() -> dict[str, str]:
    # Bytecode is cached, as on a user's machine: with PYTHONDONTWRITEBYTECODE every run would
    # compile (and pytest would assert-rewrite) the plugin's modules again, which no user pays.
    # A fixed hash seed: the instructions of two runs then differ by a few in a million.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"
    return env


def _instructions(directory: Path, python: str, plugin_on: bool, valgrind: str) -> int:
    """The instructions that one run of the suite in ``directory`` executed, in all its
    processes (valgrind's cachegrind counts them; each process prints its own total)."""
    done = subprocess.run(
        [
            valgrind,
            "--tool=cachegrind",
            "--cache-sim=no",
            "--trace-children=yes",
            "--cachegrind-out-file=/dev/null",
            *_command(python, plugin_on),
        ],
        cwd=directory,
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the suite failed under valgrind:\n{done.stdout}\n{done.stderr}")
    # A forked child's count starts from its parent's at the fork: only the processes that
    # valgrind started anew (pytest, and those exec'd: spawned children, forkservers, resource
    # trackers), which each print their command line first, are added up.
    started = set(re.findall(r"^==(\d+)== Command: ", done.stderr, re.MULTILINE))
    totals = re.findall(r"^==(\d+)== I\s+refs:\s+([\d,]+)", done.stderr, re.MULTILINE)
    return sum(int(total.replace(",", "")) for pid, total in totals if pid in started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per suite and setting")
    parser.add_argument(
        "--methods", default="fork,spawn,forkserver", help="start methods of the process suites"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the instructions of one run each way, under valgrind",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter to run the suites with (default: this one), such as that of a "
        "virtual environment where the plugin was installed with `pip install .`",
    )
    arguments = parser.parse_args()
    rounds = arguments.rounds
    python = arguments.python
    try:
        found = subprocess.run(
            [python, "-c", "import pytest_mpcheck"], capture_output=True, text=True, check=False
        )
    except OSError as error:
        parser.error(f"--python {python}: cannot run it ({error.strerror})")
    if found.returncode != 0:
        parser.error(f"--python {python}: cannot import pytest_mpcheck there\n{found.stderr}")
    valgrind = shutil.which("valgrind") if arguments.instructions else None
    if arguments.instructions and valgrind is None:
        parser.error("--instructions needs valgrind on PATH (apt install valgrind)")
    suites = [("trivial", TRIVIAL)] + [
        (f"processes-{method}", PROCESSES.replace("METHOD", method))
        for method in arguments.methods.split(",")
        if method
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in suites:
            directory = Path(tmp) / name
            directory.mkdir()
            (directory / "pytest.ini").write_text("[pytest]\n")
            (directory / f"test_{name.replace('-', '_')}.py").write_text(source)
            _run(directory, python, True)  # warm the file cache and the bytecode
            on: list[tuple[float, float, float]] = []
            off: list[tuple[float, float, float]] = []
            for _ in range(rounds):
                on.append(_run(directory, python, True))
                off.append(_run(directory, python, False))
            for index, what in ((0, "wall"), (1, "cpu")):
                median_on = statistics.median(run[index] for run in on)
                median_off = statistics.median(run[index] for run in off)
                best_on = min(run[index] for run in on)
                best_off = min(run[index] for run in off)
                print(
                    f"{name:>20} {what:>4}: plugin on {median_on:.3f}s, off {median_off:.3f}s, "
                    f"ratio {median_on / median_off:.3f} (medians of {rounds}); "
                    f"best {best_on:.3f}s / {best_off:.3f}s = {best_on / best_off:.3f}"
                )
            faults_on = statistics.median(run[2] for run in on)
            faults_off = statistics.median(run[2] for run in off)
            print(
                f"{name:>20} faults: plugin on {faults_on:.0f}, off {faults_off:.0f}, "
                f"ratio {faults_on / faults_off:.3f} (medians of {rounds})"
            )
            if valgrind is not None:
                counted_on = _instructions(directory, python, True, valgrind)
                counted_off = _instructions(directory, python, False, valgrind)
                print(
                    f"{name:>20} instructions: plugin on {counted_on / 1e6:.1f}M, "
                    f"off {counted_off / 1e6:.1f}M, ratio {counted_on / counted_off:.3f}"
                )


if __name__ == "__main__":
    main()
