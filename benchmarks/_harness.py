"""Shared timing harness of the ``speed_*.py`` benchmarks.

Every benchmark compares variants of one workload (pyro-models against plain Pyro, hand-written
PyTorch or NumPyro) *within one run*, so the ratios share the machine's state:

- each repetition of each variant runs in a **fresh subprocess** (the script re-invoked with
  ``--worker WORKLOAD VARIANT REP``), so imports, JIT caches and allocator state never leak
  from one variant into another;
- repetitions are **interleaved** (A B C, then B C A, ...), so slow drift of the machine (other
  jobs on shared cores) hits every variant alike;
- the table reports the **median** over repetitions, its min-max spread, and the ratio of the
  medians to a reference variant;
- every worker runs with the same thread count (``--threads``, default 1: ``OMP_NUM_THREADS``,
  ``torch.set_num_threads`` and XLA's CPU flags for JAX), and the machine is printed with the
  table (CPU, cores, load average, library versions, date).

A benchmark script defines its :class:`Workload` s and a ``worker(workload, variant, rep, quick)``
function returning a dict of metrics (or ``{"skipped": reason}``), then calls :func:`main`.

Run a benchmark as ``python benchmarks/speed_svi.py [--reps N] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Workload", "machine_info", "format_machine", "ratio_table", "run_benchmark", "main",
           "set_threads", "PeakMemory", "timed_steps"]


@dataclass(frozen=True)
class Workload:
    """One workload and the variants compared on it.

    Parameters
    ----------
    name : str
        Identifier passed to the worker.
    title : str
        Heading of its table.
    variants : sequence of str
        Variant names, in table order.
    reference : str or sequence of str
        The variant ratios are taken against; a sequence means the first one that ran
        (e.g. NumPyro when installed, else plain Pyro).
    metric : str
        The metric the ratio is computed on.
    higher_is_better : bool
        Whether a larger ``metric`` is better (rates) or worse (times, memory).
    columns : sequence of str
        Metrics printed (``metric`` first if left out).
    notes : dict of str to str
        A one-line description per variant, printed under the table.
    """

    name: str
    title: str
    variants: tuple[str, ...]
    reference: str | tuple[str, ...]
    metric: str
    higher_is_better: bool
    columns: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    def references(self) -> tuple[str, ...]:
        return (self.reference,) if isinstance(self.reference, str) else tuple(self.reference)


def set_threads(n: int) -> None:
    """Fix the intra-op thread count of this (worker) process before heavy imports."""
    n = str(int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n
    # JAX/XLA on CPU: one intra-op thread per process, like the torch workers.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}").strip()
    import torch

    torch.set_num_threads(int(n))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, library versions and date of this machine."""
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("torch", "pyro", "arviz", "numpyro", "jax"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # absent optional libraries are reported as such
            info[mod] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["cuda"] = None
    return info


def format_machine(info: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "pyro", "arviz", "numpyro", "jax") if info.get(k))
    load = info.get("load_avg_1_5_15")
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}; Python {info['python']}; "
            f"{libs}; GPU: {info.get('cuda') or 'none'}; load average {load}; {info['date']}")


class PeakMemory:
    """Peak resident memory (bytes) of this process above its level at ``__enter__``.

    Linux: the kernel's high-water mark (``VmHWM``) is reset on entry (``/proc/self/clear_refs``)
    and read on exit, so only what the block allocates counts (tensors included, which
    ``tracemalloc`` would not see). Elsewhere: ``ru_maxrss``, which cannot be reset, so the
    figure is a lower bound when an earlier phase peaked higher.
    """

    def __enter__(self) -> PeakMemory:
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.start = self._rss()
        self.start_peak = self._peak()
        self.peak = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._peak()
        base = self.start if self.reset else self.start_peak
        self.peak = max(0, end - base)

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _rss(self) -> int:
        v = self._status("VmRSS")
        return v if v is not None else self._peak()

    def _peak(self) -> int:
        v = self._status("VmHWM")
        if v is not None:
            return v
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def timed_steps(step: Callable[[int], Any], warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    import time

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return time.perf_counter() - t0


def _run_worker(script: str, workload: str, variant: str, rep: int, quick: bool, threads: int,
                timeout: float | None) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, script, "--worker", workload, variant, str(rep), "--threads", str(threads)]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": f"exit {proc.returncode}: {err[:200]}"}
    return json.loads(lines[-1])


def run_benchmark(script: str, workloads: Sequence[Workload], *, reps: int, quick: bool, threads: int = 1,
                  timeout: float | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every variant of every workload ``reps`` times, interleaved, one subprocess each.

    Returns
    -------
    dict
        ``{"machine": machine_info(), "workloads": {name: {variant: [result per rep]}}}``;
        a result is the worker's metrics dict, ``{"skipped": reason}`` or ``{"failed": reason}``.
    """
    out: dict[str, Any] = {"machine": machine_info(), "reps": reps, "quick": quick, "threads": threads,
                           "workloads": {}}
    for wl in workloads:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in wl.variants}
        skipped: dict[str, dict[str, Any]] = {}
        for rep in range(reps):
            k = rep % len(wl.variants)
            for v in wl.variants[k:] + wl.variants[:k]:  # rotate the order: no fixed position
                if v in skipped:
                    continue
                res = _run_worker(script, wl.name, v, rep, quick, threads, timeout)
                if "skipped" in res:
                    skipped[v] = res
                runs[v].append(res)
                if log is not None:
                    shown = res.get("skipped") or res.get("failed") or {m: res.get(m) for m in (wl.columns or (wl.metric,))}
                    log(f"[{wl.name}] rep {rep + 1}/{reps} {v}: {shown}")
        out["workloads"][wl.name] = runs
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.4g}"
        return f"{x:.3e}"
    return str(x)


def ratio_table(wl: Workload, runs: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table: median (and min-max) per metric, ratio of the metric to the reference."""
    cols = wl.columns or (wl.metric,)
    if wl.metric not in cols:
        cols = (wl.metric,) + tuple(cols)
    ok = {v: [r for r in rs if "skipped" not in r and "failed" not in r] for v, rs in runs.items()}
    med = {v: {c: statistics.median(r[c] for r in rs) for c in cols if all(c in r for r in rs)}
           for v, rs in ok.items() if rs}
    ref = next((r for r in wl.references() if r in med and wl.metric in med[r]), None)
    better = "higher" if wl.higher_is_better else "lower"
    head = ["variant", *[f"{c} (median)" for c in cols], f"{wl.metric} min-max",
            f"ratio to {ref or 'reference'} ({better} is better)", "reps"]
    lines = [f"### {wl.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in wl.variants:
        rs = runs.get(v, [])
        if v not in med:
            why = next((r.get("skipped") or r.get("failed") for r in rs if "skipped" in r or "failed" in r), "no runs")
            lines.append(f"| {v} | " + " | ".join(["-"] * (len(head) - 3)) + f" | {why} | 0 |")
            continue
        vals = [r[wl.metric] for r in ok[v] if wl.metric in r]
        spread = f"{_fmt(min(vals))}-{_fmt(max(vals))}" if vals else "-"
        ratio = "-"
        if ref is not None and wl.metric in med[v] and med[ref][wl.metric]:
            ratio = f"{med[v][wl.metric] / med[ref][wl.metric]:.3f}x"
        fails = len(rs) - len(ok[v])
        reps = f"{len(ok[v])}" + (f" ({fails} failed)" if fails else "")
        lines.append(f"| {v} | " + " | ".join(_fmt(med[v].get(c, "-")) for c in cols) + f" | {spread} | {ratio} | {reps} |")
    if wl.notes:
        lines.append("")
        lines.extend(f"- `{v}`: {note}" for v, note in wl.notes.items())
    notes = sorted({r["note"] for rs in ok.values() for r in rs if "note" in r})
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def main(doc: str, workloads: Sequence[Workload],
         worker: Callable[[str, str, int, bool], dict[str, Any]], *, script: str, default_reps: int = 3,
         argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command line of a benchmark script: run the comparison, or one worker (``--worker``).

    ``script`` is the benchmark's own file (``__file__``): workers re-invoke it.
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=default_reps, help="fresh-process repetitions per variant")
    ap.add_argument("--quick", "--smoke", action="store_true", dest="quick",
                    help="tiny budgets: checks that every variant runs, timings mean nothing")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every worker (default 1)")
    ap.add_argument("--only", nargs="*", default=None, metavar="WORKLOAD", help="run only these workloads")
    ap.add_argument("--variants", nargs="*", default=None, metavar="VARIANT",
                    help="run only these variants (the reference is kept when it is one of them)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before a worker is stopped")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "VARIANT", "REP"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    names = {wl.name: wl for wl in workloads}
    if args.worker:
        set_threads(args.threads)
        name, variant, rep = args.worker
        if name not in names or variant not in names[name].variants:
            ap.error(f"unknown workload/variant {name}/{variant}")
        res = worker(name, variant, int(rep), args.quick)
        print(json.dumps(res))
        return None
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {sorted(names)}")
    chosen = [names[n] for n in args.only] if args.only else list(workloads)
    if args.variants:
        known = {v for wl in chosen for v in wl.variants}
        bad = sorted(set(args.variants) - known)
        if bad:
            ap.error(f"unknown variant(s) {bad}; choose from {sorted(known)}")
        chosen = [dataclasses.replace(wl, variants=tuple(v for v in wl.variants if v in args.variants))
                  for wl in chosen]
    results = run_benchmark(os.path.abspath(script), chosen, reps=args.reps, quick=args.quick, threads=args.threads,
                            timeout=args.timeout, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_machine(results["machine"]))
    print(f"Median of {args.reps} fresh-process repetition(s) per variant, interleaved; "
          f"{args.threads} thread(s) per worker{'; QUICK mode: budgets too small for the timings to mean anything' if args.quick else ''}.")
    for wl in chosen:
        print()
        print(ratio_table(wl, results["workloads"][wl.name]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results
