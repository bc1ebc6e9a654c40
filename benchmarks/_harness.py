"""Shared harness of the engine-vs-PyTorch CPU benchmarks (bench_triplet.py,
bench_lenet.py): worker processes, thread settings, rounds, statistics, the
printed table and the JSON record.

Protocol (the contract the figures rest on):

* Each measurement runs in a fresh worker process of its own (the benchmark
  script re-invoked with ``--engine E --case C --threads T``), so neither
  engine's idle thread pool (OpenMP spin-waiting, OpenBLAS) can slow the
  other, and each starts from the same cold state.
* The thread count is fixed before numpy/torch are imported: OMP_NUM_THREADS,
  OPENBLAS_NUM_THREADS and MKL_NUM_THREADS in the worker's environment (set
  by the parent and again by :func:`set_thread_env` in the worker), plus
  ``torch.set_num_threads(T)`` in a PyTorch worker.  Workers report the
  thread counts their libraries ended up with (threadpoolctl / torch), so a
  setting that did not take shows in the JSON.
* Rounds alternate the engines (round 0: A then B, round 1: B then A, ...),
  so a slow or busy stretch of the machine hits both; each engine's figure is
  the median over rounds, reported with its min-max spread.  Never best-of-N:
  that rewards whichever engine caught a quiet moment.

This module imports neither numpy nor torch at import time: the parent
process stays light and a worker can set its threads first.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
ENGINE_NAMES = {"layergraph": "layergraph", "torch": "PyTorch"}


def set_thread_env(threads, env=None):
    """Cap every BLAS/OpenMP pool at ``threads`` in ``env`` (default: this
    process's environment; only effective before numpy/torch are imported)."""
    env = os.environ if env is None else env
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """Where the figures came from (no library imports)."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": load,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


# ------------------------------------------------------------ worker side --
class StepTimer:
    """Times ``steps`` calls of ``step()`` after ``warmup`` untimed ones, and
    the CPU time the process used meanwhile (all its threads)."""

    def __init__(self, step, warmup, steps):
        self.step, self.warmup, self.steps = step, warmup, steps

    def run(self):
        import resource
        for _ in range(self.warmup):
            self.step()
        times = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(self.steps):
            t = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        times.sort()
        return {"seconds": wall, "step_ms_median": 1e3 * times[len(times) // 2],
                "step_ms_min": 1e3 * times[0], "cpu_seconds": cpu,
                "cores_busy": cpu / wall if wall > 0 else None}


def maxrss_mb():
    """Peak resident set size of this process so far, in MiB (Linux: KiB)."""
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2 ** 20


def emit(record):
    """The worker's one result line (the parent reads the last line)."""
    sys.stdout.write("RESULT " + json.dumps(record) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------ parent side --
class WorkerError(RuntimeError):
    pass


def run_worker(script, engine, case, threads, extra=(), timeout=900):
    """Run ``script --engine engine --case case --threads threads *extra`` in
    a fresh process with the thread variables set (``threads`` a list: the
    largest); returns its result dict."""
    counts = list(threads) if isinstance(threads, (list, tuple)) else [threads]
    env = set_thread_env(max(counts), dict(os.environ))
    cmd = [sys.executable, script, "--engine", engine, "--case", case,
           "--threads", *map(str, counts), *map(str, extra)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"{engine}/{case}/{threads} threads: no result in {timeout} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise WorkerError(f"{engine}/{case}/{threads} threads failed (exit {proc.returncode}): "
                          f"{tail}\n  command: {' '.join(cmd)}")
    return json.loads(lines[-1][len("RESULT "):])


def spread(values):
    """median, min, max of a non-empty list."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def alternate_rounds(script, cases, threads_list, engines, rounds, extra_for, progress=print):
    """Run every (case, threads, engine) once per round, engines alternating
    their order from round to round.  Returns (results, errors):
    results[case][threads][engine] = list of worker records (one per round
    that succeeded), errors = messages of the workers that failed.  A failure
    in the first round raises WorkerError (a persistent problem: a missing
    dataset, a broken engine); a later one is recorded and the run goes on,
    the median then being over the rounds that did run."""
    results = {c: {t: {e: [] for e in engines} for t in threads_list} for c in cases}
    errors = []
    total = rounds * len(cases) * len(threads_list) * len(engines)
    done = 0
    for r in range(rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for case in cases:
            for t in threads_list:
                for engine in order:
                    done += 1
                    head = (f"  [{done}/{total}] round {r + 1} {case:<9} {t} thr "
                            f"{ENGINE_NAMES.get(engine, engine):<10}")
                    try:
                        rec = run_worker(script, engine, case, t, extra_for(case))
                    except WorkerError as err:
                        if r == 0:
                            raise
                        errors.append(f"round {r + 1}: {err}")
                        if progress:
                            progress(f"{head} FAILED (recorded; the run goes on)")
                        continue
                    rec["round"] = r
                    results[case][t][engine].append(rec)
                    if progress:
                        progress(f"{head} {rec['images_per_s']:8.0f} images/s "
                                 f"({rec['cores_busy']:.2f} cores busy)")
    return results, errors


def summarize(results, engines, ours="layergraph", theirs="torch"):
    """Per case and thread count: each engine's images/s spread, the ratio of
    the medians ours/theirs and the per-round paired ratios; per case and
    engine: the scaling of each thread count over the smallest; peak RSS."""
    out = {}
    for case, by_threads in results.items():
        entry = {"threads": {}, "scaling": {}}
        for t, by_engine in by_threads.items():
            row = {}
            for e in engines:
                recs = by_engine[e]
                if not recs:
                    continue
                row[e] = spread([r["images_per_s"] for r in recs])
                row[e]["cores_busy"] = statistics.median(r["cores_busy"] for r in recs)
                row[e]["maxrss_mb"] = spread([r["maxrss_mb"] for r in recs])
                row[e]["maxrss_setup_mb"] = spread([r["maxrss_setup_mb"] for r in recs])
                row[e]["rounds_images_per_s"] = [round(r["images_per_s"], 1) for r in recs]
            if ours in row and theirs in row:
                row["ratio"] = row[ours]["median"] / row[theirs]["median"]
                theirs_by_round = {b.get("round"): b for b in by_engine[theirs]}
                pairs = [a["images_per_s"] / theirs_by_round[a.get("round")]["images_per_s"]
                         for a in by_engine[ours] if a.get("round") in theirs_by_round]
                if pairs:
                    row["ratio_per_round"] = spread(pairs)
            entry["threads"][t] = row
        ts = sorted(by_threads)
        for e in engines:
            base = entry["threads"][ts[0]].get(e)
            if base is None:
                continue
            entry["scaling"][e] = {f"{t}/{ts[0]}": entry["threads"][t][e]["median"] / base["median"]
                                   for t in ts[1:] if e in entry["threads"][t]}
        out[case] = entry
    return out


def busy_notes(summary, engines=("layergraph", "torch")):
    """Warnings where workers ran on fewer cores than they had threads for
    (other processes held the CPU): those figures measure the machine's load.
    Returns (one printable line or None, the details per measurement)."""
    details = []
    cpus = os.cpu_count() or 1
    for case, entry in summary.items():
        for t, row in entry["threads"].items():
            for e in engines:
                if e in row and row[e]["cores_busy"] < 0.85 * min(t, cpus):
                    details.append({"case": case, "threads": t, "engine": e,
                                    "cores_busy": round(row[e]["cores_busy"], 2)})
    if not details:
        return None, details
    busy = [d["cores_busy"] for d in details]
    total = sum(len([e for e in engines if e in row]) for entry in summary.values()
                for row in entry["threads"].values())
    who = ", ".join(sorted({f"{d['engine']} {d['case']} {d['threads']} thr" for d in details}))
    line = (f"note: {len(details)} of {total} measurements kept fewer cores busy than they "
            f"had threads for (median over rounds {min(busy):.2f}-{max(busy):.2f} cores: "
            f"{who}): serial work in the engine's step, or other processes holding the CPU")
    return line, details


def fmt_rate(s):
    return f"{s['median']:7,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def print_table(summary, titles, engines, ours="layergraph", theirs="torch"):
    """The human-readable result: one block per case."""
    names = [ENGINE_NAMES.get(e, e) for e in engines]
    for case, entry in summary.items():
        print()
        print(titles.get(case, case))
        header = f"  {'threads':>7}  " + "  ".join(f"{n + ' img/s (min-max)':>28}" for n in names)
        if ours in engines and theirs in engines:
            header += f"  {'ours/PyTorch':>12}  {'per-round':>11}"
        print(header)
        for t, row in sorted(entry["threads"].items()):
            line = f"  {t:>7}  " + "  ".join(
                f"{fmt_rate(row[e]) if e in row else '-':>28}" for e in engines)
            if "ratio" in row:
                pr = row.get("ratio_per_round")
                line += f"  {row['ratio']:>11.2f}x"
                line += f"  {pr['min']:.2f}-{pr['max']:.2f}" if pr else ""
            print(line)
        for e in engines:
            for key, value in entry["scaling"].get(e, {}).items():
                print(f"  scaling {key} threads, {ENGINE_NAMES.get(e, e)}: {value:.2f}x")


def print_memory(summary, case, engines, steps):
    entry = summary.get(case)
    if not entry:
        return
    print()
    print(f"Peak RSS of a {case} training run (ru_maxrss after {steps} steps; "
          f"in brackets: after set-up, before the first step), median over rounds:")
    for t, row in sorted(entry["threads"].items()):
        parts = [f"{ENGINE_NAMES.get(e, e)} {row[e]['maxrss_mb']['median']:.0f} MiB "
                 f"({row[e]['maxrss_setup_mb']['median']:.0f})" for e in engines if e in row]
        print(f"  {t} thread(s): " + ", ".join(parts))


def write_json(path, record):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")
