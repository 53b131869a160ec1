"""Before/after benchmark of the training step and the decoder: an OLD checkout against this tree, alternately.

Usage (repository root, on the GPU machine, with the environment the bench needs on PYTHONPATH):
    python3 tools/perf/before_after.py OLD_CHECKOUT [--rounds 3] [--only ptuning16,decode16]
        [--family chatglm-6b --family chatglm3-6b] [--workdir /tmp/before-after] [--tiny]

For each family, `python -m glmcore.bench` runs from the old checkout, then from this tree, `--rounds` times
each (old, new, old, new, ...), every run in a fresh process with that checkout first on PYTHONPATH. Both
sides read one random checkpoint per family (written by the first run, deleted after the family's last). Each
figure's medians are printed with the after/before ratio; a figure more than 3% worse after is marked. The
bench's own stderr goes to WORKDIR/bench.err. `--tiny` only checks that the suite runs (its numbers mean
nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parents[2]
DEFAULT_FAMILIES = ("chatglm-6b", "chatglm3-6b")
TOLERANCE = 0.03
"""How much worse a median after may be (the issue's rule for moved decoder or training paths)."""
HIGHER_IS_BETTER = ("tokens_per_s", "share_of_bound")
LOWER_IS_BETTER = ("s_per_step", "step_ms", "peak_GiB", "seconds")
NOT_MEASURED = ("weights_GB", "bound_tokens_per_s")
"""Figures that describe the setup rather than measure it."""


def bench_lines(checkout: Path, family: str, args: argparse.Namespace, errors) -> list[dict]:
    """One bench run from `checkout`: its JSON lines."""
    command = [sys.executable, "-m", "glmcore.bench", "--family", family, "--only", args.only]
    command += ["--workdir", str(args.workdir / family)] + (["--tiny"] if args.tiny else [])
    path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        command, cwd=checkout, env=environment, stdout=subprocess.PIPE, stderr=errors, text=True
    )
    if done.returncode != 0:
        sys.exit(f"the bench failed in {checkout} ({family}, exit {done.returncode}); see {errors.name}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def measurements(lines: list[dict]) -> dict[str, float]:
    """`figure(setting=value, ...) metric` → value, for every measured number of a run."""
    found = {}
    for line in lines:
        figure = line.get("figure")
        if figure in ("environment", "random_checkpoint_written"):
            continue
        measured = {name: value for name, value in line.items() if is_measured(name, value)}
        settings = ", ".join(
            f"{name}={value}"
            for name, value in line.items()
            if name != "figure" and name not in NOT_MEASURED and name not in measured
        )
        for name, value in measured.items():
            parts = value.items() if isinstance(value, dict) else [("", value)]
            for part, number in parts:
                if isinstance(number, int | float) and not isinstance(number, bool):
                    found[f"{figure}({settings}) {name}{'.' + part if part else ''}"] = float(number)
    return found


def is_measured(name: str, value: object) -> bool:
    """A float, a table of them (step_ms), or a known measurement that may be missing (peak_GiB on a CPU)."""
    return name not in NOT_MEASURED and (isinstance(value, float | dict) or direction(name) != 0)


def direction(metric: str) -> int:
    """+1 where a larger number is better, -1 where a smaller one is, 0 where neither is known."""
    name = metric.rsplit(" ", 1)[-1]
    if any(name.startswith(known) for known in HIGHER_IS_BETTER):
        return 1
    if any(name.startswith(known) for known in LOWER_IS_BETTER):
        return -1
    return 0


def verdict(metric: str, before: float, after: float) -> str:
    sign = direction(metric)
    if not sign or not before:
        return ""
    change = (after - before) / before * sign
    return f"WORSE by {-change:.1%}" if change < -TOLERANCE else "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the old checkout (its repository root)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="ptuning16,decode16", help="the bench's figures (its --only)")
    parser.add_argument("--family", action="append", help="repeatable; default chatglm-6b and chatglm3-6b")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/before-after"))
    parser.add_argument("--tiny", action="store_true", help="the bench's toy shape: checks this runs")
    args = parser.parse_args()
    old = args.old.resolve()
    if not (old / "glmcore" / "bench.py").is_file():
        parser.error(f"{old} holds no glmcore/bench.py: give the old checkout's repository root")
    args.workdir.mkdir(parents=True, exist_ok=True)
    with open(args.workdir / "bench.err", "a", encoding="utf-8") as errors:
        for family in args.family or DEFAULT_FAMILIES:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            try:
                for round_number in range(1, args.rounds + 1):
                    for side, checkout in (("before", old), ("after", NEW)):
                        print(f"== {family} round {round_number}: {side} ({checkout})", flush=True)
                        runs[side].append(measurements(bench_lines(checkout, family, args, errors)))
            finally:
                shutil.rmtree(args.workdir / family, ignore_errors=True)
            report(family, runs)


def report(family: str, runs: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{family}: medians of {len(runs['before'])} runs each; ratio = after / before")
    print(f"{'before':>12} {'after':>12} {'ratio':>7}  {'':<16} figure")
    metrics = sorted({metric for run in runs["before"] + runs["after"] for metric in run})
    for metric in metrics:
        before = [run[metric] for run in runs["before"] if metric in run]
        after = [run[metric] for run in runs["after"] if metric in run]
        if not before or not after:
            print(f"{'':>12} {'':>12} {'':>7}  {'only one side':<16} {metric}")
            continue
        median_before, median_after = statistics.median(before), statistics.median(after)
        ratio = f"{median_after / median_before:.3f}" if median_before else "-"
        mark = verdict(metric, median_before, median_after)
        print(f"{median_before:>12.4g} {median_after:>12.4g} {ratio:>7}  {mark:<16} {metric}")


if __name__ == "__main__":
    main()
