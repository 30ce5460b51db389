"""What the plugin costs a suite that runs pytest in-process (``pytester.runpytest()``, as
pytest-xdist's own suite does), and what each such run leaves alive.

An outer pytest process runs a small project ``--runs`` times with
``pytester.runpytest_inprocess``, one run per test, once with the plugin on in the inner runs and
once with ``-p no:mpcheck`` for them; all that for an outer run with ``-p no:mpcheck`` (the inner
runs load the plugin through its entry point, and import it afresh each time: pytester drops what a
run imported) and for one with the plugin on. Before each outer test, after the teardown of the
previous one, it collects garbage and counts the objects the collector tracks. Printed for each
side: the time per inner run, the objects retained per run (the slope after the first run, which
pays for the imports), the inner ``Config`` objects still alive at the end, the time of the last
``gc.collect()`` (what a teardown pays once objects pile up), and the ratios.
Usage: ``python benchmarks/bench_inprocess.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

INNER = """
import multiprocessing
from multiprocessing import shared_memory

import pytest

def work():
    pass

@pytest.mark.parametrize("n", range(20))
def test_trivial(n):
    assert n >= 0

def test_start_join():
    p = multiprocessing.get_context("fork").Process(target=work)
    p.start()
    p.join()
    assert p.exitcode == 0

def test_shared_memory():
    segment = shared_memory.SharedMemory(create=True, size=4096)
    segment.close()
    segment.unlink()
"""

OUTER = """
import gc
import json
import os
import time
import weakref

import pytest

pytest_plugins = ["pytester"]

INNER = {inner!r}
RUNS = int(os.environ["BENCH_RUNS"])
counts, times, collects, configs = [], [], [], []


class KeepConfig:
    def pytest_configure(self, config):
        configs.append(weakref.ref(config))


@pytest.mark.parametrize("n", range(RUNS))
def test_run(pytester, n):
    # Measured here, after the teardown of the previous test, where pytester lets go of its runs.
    started = time.perf_counter()
    gc.collect()
    collects.append(time.perf_counter() - started)
    counts.append(len(gc.get_objects()))
    pytester.makepyfile(test_inner=INNER)
    extra = ["-p", "no:mpcheck"] if os.environ["BENCH_PLUGIN"] == "off" else []
    started = time.perf_counter()
    result = pytester.runpytest_inprocess(
        "-q", "-p", "no:cacheprovider", *extra, plugins=[KeepConfig()]
    )
    times.append(time.perf_counter() - started)
    assert result.ret == 0, result.stdout.str()


def test_write():
    gc.collect()
    alive = sum(1 for ref in configs if ref() is not None)
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(dict(counts=counts, times=times, collects=collects, alive=alive), out)
"""


def _side(directory: Path, outer: str, plugin: str, runs: int) -> dict[str, float]:
    out = directory / f"result-{outer}-{plugin}.json"
    env = dict(os.environ, BENCH_PLUGIN=plugin, BENCH_RUNS=str(runs), BENCH_OUT=str(out))
    # pytest-xdist stays loaded: otherwise each run imports it afresh, and its last copy keeps
    # that run's Config alive (with or without this plugin).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if outer == "off":
        command += ["-p", "no:mpcheck"]
    command.append("test_outer.py")
    subprocess.run(command, cwd=directory, env=env, check=True, capture_output=True, timeout=900)
    data = json.loads(out.read_text())
    counts = data["counts"]
    return {
        "per_run": sum(data["times"][1:]) / (runs - 1),
        # From the second run: the first pays for the imports.
        "retained": (counts[-1] - counts[1]) / (runs - 2),
        "configs": data["alive"],
        "collect": data["collects"][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="In-process runs per side")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as tmp:
        directory = Path(tmp)
        (directory / "test_outer.py").write_text(OUTER.format(inner=INNER))
        for outer in ("off", "on"):
            on = _side(directory, outer, "on", args.runs)
            off = _side(directory, outer, "off", args.runs)
            print(
                f"{args.runs} in-process runs of a 22-test project, the outer run with the plugin "
                f"{outer}; the inner runs with the plugin on, and with -p no:mpcheck:"
            )
            for label, side in (("plugin on", on), ("plugin off", off)):
                print(
                    f"  {label:10}: {side['per_run'] * 1000:6.1f} ms per run, "
                    f"{side['retained']:6.0f} objects retained per run, "
                    f"{side['configs']:3.0f} inner Config objects alive at the end, "
                    f"gc.collect() {side['collect'] * 1000:5.1f} ms"
                )
            print(
                f"  ratio on/off: time {on['per_run'] / off['per_run']:.2f}, "
                f"gc.collect() {on['collect'] / max(off['collect'], 1e-9):.2f}"
            )


if __name__ == "__main__":
    main()
