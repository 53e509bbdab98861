"""Run every benchmark in bench/ and print one summary table.

Run: ``.venv/bin/python bench/run_all.py``

Each ``bench_*.py`` runs in its own process (one after the other, so they do
not compete for the 2 cores); its output is echoed, and the ``SUMMARY`` lines
it prints are collected into the table at the end. Where a script measured the
same figure on the Node.js Socket.IO baseline (bench/baselines/node-relay), the
table shows it next to Bisik's and the ratio Bisik / baseline. Figures only, no
verdicts.

``--quick`` passes each script the short settings in ``QUICK`` (a smoke run of
a few minutes in all); ``--only relay,idle`` runs a subset; ``--args
'relay=--duration 10'`` adds arguments to one script (repeatable).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import banner, cpu_ticks, steal_since

HERE = Path(__file__).resolve().parent

# Short settings per script for ``--quick`` (keyed by the name after ``bench_``).
QUICK = {
    "attachments": ["--size-mb", "64"],
    "catchup": ["-n", "2000"],
    "crypto": ["--unlock-runs", "3", "--budget", "0.5"],
    "groups": ["--members", "50", "-n", "10"],
    "idle": ["--counts", "500,1000"],
    "latency": ["-n", "100", "--burst", "300"],
    "relay": ["--duration", "3"],
    "typing": ["--devices", "200"],
}

Row = tuple[str, str, str, str | None, str | None]


def _number(text: str) -> float | None:
    match = re.match(r"\s*(-?[0-9.]+)", text)
    return float(match.group(1)) if match else None


def ratio(value: str, baseline: str | None) -> str:
    """Bisik / baseline, when both figures start with a number."""
    if baseline is None:
        return ""
    ours, theirs = _number(value), _number(baseline)
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def print_table(rows: list[Row]) -> None:
    header = ("script", "figure", "bisik", "node baseline", "ratio")
    table = [
        (s, n, v, b or "", (f"{ratio(v, b)} ({better} is better)" if b else ""))
        for s, n, v, b, better in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    rule = "=" * (sum(widths) + 3 * (len(widths) - 1))
    print(rule)
    print("   ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    print("-" * len(rule))
    for row in table:
        cells = [f"{row[0]:<{widths[0]}}", f"{row[1]:<{widths[1]}}"]
        cells += [f"{c:>{w}}" for c, w in zip(row[2:], widths[2:], strict=True)]
        print("   ".join(cells).rstrip())
    print("-" * len(rule))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short settings (QUICK)")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. relay,idle")
    parser.add_argument(
        "--args", action="append", default=[], help="NAME=ARGS for one script (repeatable)"
    )
    args = parser.parse_args()
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, rest = item.partition("=")
        extra.setdefault(name, []).extend(shlex.split(rest))
    only = {n.strip() for n in args.only.split(",") if n.strip()}

    banner("bench/run_all.py")
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    rows: list[Row] = []
    durations: list[tuple[str, float, int, float]] = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        argv = (QUICK.get(name, []) if args.quick else []) + extra.get(name, [])
        print(f"### {script.name} {' '.join(argv)}", flush=True)
        t0, ticks0 = time.perf_counter(), cpu_ticks()
        proc = subprocess.Popen(
            [sys.executable, str(script), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SUMMARY\t"):
                fields = line.rstrip("\n").split("\t")
                baseline, better = (fields[3], fields[4]) if len(fields) >= 5 else (None, None)
                rows.append((script.stem, fields[1], fields[2], baseline, better))
            else:
                print(line, end="", flush=True)
        code = proc.wait()
        durations.append((script.name, time.perf_counter() - t0, code, steal_since(ticks0)))
        print()

    print_table(rows)
    for script_name, seconds, code, steal in durations:
        status = "" if code == 0 else f"  (exit code {code})"
        print(f"{script_name}: {seconds:.1f} s wall, CPU steal {steal:.0%}{status}")
    print("(CPU steal: the share of the machine's CPU time the hypervisor gave to other VMs)")
    return 0 if all(code == 0 for *_, code, _ in durations) else 1


if __name__ == "__main__":
    sys.exit(main())
