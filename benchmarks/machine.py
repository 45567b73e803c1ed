"""What a benchmark records about the machine it ran on, shared by every benchmark: CPU
model and estimated peak, GPU, package versions, load average, other processes' CPU
load while a side runs, this process's peak RSS and CPU seconds."""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path


def cpu_info() -> dict:
    """CPU model, cores, clock, SIMD flags and an estimated fp32 peak (assumption stated)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name):
        m = re.search(rf"^{name}\s*:\s*(.*)$", text, re.M)
        return m.group(1).strip() if m else None

    flags = set((field("flags") or "").split())
    vendor, family = field("vendor_id") or "", int(field("cpu family") or 0)
    mhz = float(field("cpu MHz") or 0.0)
    cores = os.cpu_count() or 1
    # fp32 FLOPs per cycle per core, assuming two FMA pipes:
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == 25:
        per_cycle, why = 32, "AVX-512 on AMD Zen 4 (family 25) runs on 2x256-bit FMA pipes: 2 x 8 lanes x 2"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512 with 2 FMA units: 2 x 16 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2 + FMA with 2 FMA units: 2 x 8 lanes x 2"
    elif "avx" in flags:
        per_cycle, why = 16, "AVX without FMA: 8-lane add + 8-lane mul"
    else:
        per_cycle, why = 8, "SSE: 4-lane add + 4-lane mul"
    peak = cores * mhz * 1e6 * per_cycle
    return {
        "model": field("model name") or platform.processor(), "vendor": vendor,
        "family": family, "model_id": field("model"), "logical_cores": cores,
        "threads_per_core": lscpu_field("Thread(s) per core"), "mhz": mhz,
        "simd": sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16")),
        "peak_fp32_gflops": round(peak / 1e9, 1),
        "peak_assumption": (f"{cores} logical cores x {mhz:.0f} MHz (/proc/cpuinfo, no turbo) x "
                            f"{per_cycle} fp32 FLOPs/cycle ({why}); a theoretical upper bound"),
    }


def lscpu_field(key: str):
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(rf"^{re.escape(key)}:\s*(.*)$", out, re.M)
    return m.group(1).strip() if m else None


def nvidia_smi(fields: str) -> str | None:
    """`nvidia-smi --query-gpu=<fields>` as CSV without header; None without a usable one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def gpu_name() -> str | None:
    return nvidia_smi("name")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_slug() -> str:
    """`<cpu model>-<n>cpu[-<gpu>]`, lower case, for result file names."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu_model()}-{os.cpu_count()}cpu").strip("-").lower()
    gpu = gpu_name()
    if gpu:
        slug += "-" + re.sub(r"[^A-Za-z0-9]+", "-", gpu.splitlines()[0]).strip("-").lower()
    return slug


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "evosax", "numpy", "torch",
                 "efficientnet-lite-pytorch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_result(benchmark: str, fields: dict, out: Path | None = None) -> Path:
    """Write `fields` under the record every CPU benchmark starts with (name, date, machine,
    versions, load, the command that ran) to `out`, or to
    benchmarks/results/<benchmark>-<date>-<machine>.json; returns the path."""
    import json
    import sys
    record = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": cpu_info(), "versions": versions(), "loadavg": loadavg(),
              "command": " ".join(["python", f"benchmarks/{benchmark}.py"] + sys.argv[1:]), **fields}
    path = out or (Path(__file__).resolve().parent / "results" /
                   f"{benchmark}-{time.strftime('%Y-%m-%d')}-{machine_slug()}.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class OtherLoad:
    """CPU time used by *other* processes while a side runs: busy time of the whole machine
    (/proc/stat) minus this process's own (and its children's) CPU time, in cores."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def cores(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return round(max(busy - self.busy0 - (self._own() - self.own0), 0.0) / max(wall, 1e-9), 2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
