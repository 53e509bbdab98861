"""Helpers shared by the benchmark scripts: machine banner, percentiles, CPU time.

Benchmarks print figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), e.g. ``ext4`` or ``tmpfs``."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def banner(title: str) -> None:
    """Print the script title and the machine it runs on."""
    import tempfile

    print(f"== {title} ==")
    print(f"machine: nproc={os.cpu_count()}  cpu={cpu_model()!r}")
    print(
        f"python:  {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})"
    )
    tmp = Path(tempfile.gettempdir())
    print(f"temp dir: {tmp} on {fs_type(tmp)}")
    print()


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (like numpy's default), ``pct`` in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU so far, from /proc/stat: on a VM,
    steal is the time the hypervisor gave our CPUs to someone else."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[7], sum(fields)


def steal_since(ticks: tuple[int, int]) -> float:
    """The share of the machine's CPU time stolen since ``cpu_ticks()`` gave ``ticks``."""
    steal, total = (b - a for a, b in zip(ticks, cpu_ticks(), strict=True))
    return steal / max(1, total)


def proc_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    target = "self" if pid is None else str(pid)
    text = Path(f"/proc/{target}/stat").read_text()
    # The command name (field 2) may contain spaces; split after its closing paren.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def proc_memory_mib(pid: int | None = None) -> tuple[float, float]:
    """Resident set size now and its peak (VmRSS, VmHWM) of a process, in MiB."""
    target = "self" if pid is None else str(pid)
    values = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    for line in Path(f"/proc/{target}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0]) / 1024  # the kernel reports kB
    return values["VmRSS"], values["VmHWM"]


def summary_line(
    name: str, value: str, *, baseline: str | None = None, higher_is_better: bool = False
) -> None:
    """A machine-readable line that ``run_all.py`` collects into its table.

    With ``baseline`` (the same figure measured on the Node.js relay in the same
    run) the table also shows it and the ratio Bisik/baseline; ``higher_is_better``
    says which way the ratio reads (throughput) as opposed to latency or memory.
    """
    if baseline is None:
        print(f"SUMMARY\t{name}\t{value}")
    else:
        better = "higher" if higher_is_better else "lower"
        print(f"SUMMARY\t{name}\t{value}\t{baseline}\t{better}")
