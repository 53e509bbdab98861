"""Run every benchmark in bench/ and print one summary table.

Run: ``.venv/bin/python bench/run_all.py``

Each ``bench_*.py`` runs in its own process (one after the other, so they do
not compete for the 2 cores); its output is echoed, and the ``SUMMARY`` lines
it prints are collected into the table at the end. Figures only, no verdicts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _common import banner

HERE = Path(__file__).resolve().parent


def main() -> int:
    banner("bench/run_all.py")
    scripts = sorted(HERE.glob("bench_*.py"))
    rows: list[tuple[str, str, str]] = []
    durations: list[tuple[str, float, int]] = []
    for script in scripts:
        print(f"### {script.name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SUMMARY\t"):
                _, name, value = line.rstrip("\n").split("\t", 2)
                rows.append((script.stem, name, value))
            else:
                print(line, end="", flush=True)
        code = proc.wait()
        durations.append((script.name, time.perf_counter() - t0, code))
        print()

    width_s = max([len("script"), *(len(r[0]) for r in rows)])
    width_n = max([len("figure"), *(len(r[1]) for r in rows)])
    width_v = max([len("value"), *(len(r[2]) for r in rows)])
    print("=" * (width_s + width_n + width_v + 6))
    print(f"{'script':<{width_s}}   {'figure':<{width_n}}   {'value':>{width_v}}")
    print("-" * (width_s + width_n + width_v + 6))
    for script_name, name, value in rows:
        print(f"{script_name:<{width_s}}   {name:<{width_n}}   {value:>{width_v}}")
    print("-" * (width_s + width_n + width_v + 6))
    for script_name, seconds, code in durations:
        status = "" if code == 0 else f"  (exit code {code})"
        print(f"{script_name}: {seconds:.1f} s wall{status}")
    return 0 if all(code == 0 for _, _, code in durations) else 1


if __name__ == "__main__":
    sys.exit(main())
