"""Benchmark the course on this machine: `make bench`.

Measures, and writes as Markdown and JSON (``bench/results.md``, ``bench/results.json``):

- every lesson's wall time for a full top-to-bottom execution in a fresh kernel, and the
  kernel's peak resident memory (``VmHWM`` of the kernel process);
- the whole course's total;
- ``make test``'s wall time (skip with ``--skip-tests``);
- course_lib's training overhead: ``fit(record=False)`` and ``fit(record=True)`` against a bare
  PyTorch loop on the same model, data and batches, interleaved, as two ratios (``--speed-only``
  measures only this);
- the time ``import course_lib`` adds beyond importing torch;
- autograding throughput: submissions per minute that ``course_lib.grading.autograde`` grades for
  one lesson (default ``00_welcome``, model solutions, in the bubblewrap sandbox when it can start)
  with 1 and with 2 parallel jobs (skip with ``--skip-grading``; ``--grading-only`` measures only
  this).

Exits non-zero when a target is missed, naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "lesson_seconds": 90.0,
    "lesson_peak_gb": 1.5,
    "course_minutes": 15.0,
    "fit_overhead": 1.03,
    "record_overhead": 1.08,
    "import_seconds": 1.0,
}


def _peak_rss_gb(pid: int) -> float:
    """Peak resident set size of a live process (Linux ``VmHWM``), in GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def run_notebook(path: Path, timeout: int = 600) -> dict:
    """Execute a notebook in a fresh kernel; return its wall time and the kernel's peak RSS."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    peak: dict[str, float] = {}

    def on_cell_executed(**kwargs: object) -> None:  # VmHWM only grows: the last read is the peak
        pid = client.km.provisioner.process.pid
        peak["gb"] = _peak_rss_gb(pid)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=on_cell_executed)
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:  # report and go on with the other lessons
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
    return {"seconds": time.perf_counter() - start, "peak_gb": peak.get("gb", float("nan")),
            "error": error}


def bare_loop(model, loader, epochs: int, lr: float = 0.01) -> None:
    """The reference: a bare PyTorch loop (zero_grad, forward, cross_entropy, backward, step)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()


def training_overhead(repeats: int = 11, epochs: int = 10) -> dict:
    """Time per run of ``fit(record=False)`` and ``fit(record=True)`` (default interval) against
    a bare PyTorch loop: the same model (a 10-layer width-128 ReLU MLP), data (8x8 digits),
    batches (64, same shuffling) and optimizer (SGD, momentum 0.9), one thread, interleaved in a
    rotating order; medians of ``repeats`` rounds after one warm-up round."""
    import torch

    from course_lib import seed_everything
    from course_lib.data import load_digits, make_loader
    from course_lib.models import mlp
    from course_lib.train import fit

    torch.set_num_threads(1)
    x, y = load_digits()
    steps = epochs * len(make_loader(x, y, 64))
    variants = {
        "bare": lambda m, dl: bare_loop(m, dl, epochs),
        "fit": lambda m, dl: fit(m, dl, epochs, lr=0.01, record=False, progress=False),
        "fit_recorded": lambda m, dl: fit(m, dl, epochs, lr=0.01, record=True, progress=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for rep in range(repeats + 1):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]  # rotate the order: no variant always runs first
            seed_everything(0)
            model = mlp(64, 10, depth=10, width=128, activation="relu", init="kaiming_normal")
            loader = make_loader(x, y, 64, seed=rep)
            start = time.perf_counter()
            variants[name](model, loader)
            if rep > 0:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": "mlp(64, 10, depth=10, width=128), batch 64, digits, SGD momentum 0.9",
            "threads": torch.get_num_threads(), "steps": steps,
            "ms_per_step": {k: 1e3 * v / steps for k, v in med.items()},
            "fit_ratio": med["fit"] / med["bare"],
            "recorded_ratio": med["fit_recorded"] / med["bare"]}


def import_overhead(modules: str = "course_lib", repeats: int = 5) -> float:
    """Median seconds that importing ``modules`` adds after ``import torch`` (fresh interpreters)."""
    code = (f"import time, torch; t = time.perf_counter(); import {modules}; "
            "print(time.perf_counter() - t)")
    values = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout) for _ in range(repeats)]
    return statistics.median(values)


def import_baseline_gb() -> float:
    """Peak RSS of a fresh interpreter that only imports what every lesson imports. With the CUDA
    build of torch on a CPU machine this alone is about 0.9 GB (the CPU wheels are smaller)."""
    code = ("import torch, torchvision, matplotlib.pyplot, sklearn.datasets, ipykernel, course_lib.train, "
            "course_lib.plots; print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out) * 1024 / 1e9


def _model_submission(released: Path, source: Path, target: Path) -> None:
    """The released notebook with the source's solutions filled in (markers dropped)."""
    import nbformat

    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source
                 for c in nbformat.read(str(source), as_version=4).cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.read(str(released), as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solutions:
            cell.source = "\n".join(l for l in solutions[gid].split("\n")
                                    if "BEGIN SOLUTION" not in l and "END SOLUTION" not in l)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))


def grading_throughput(lesson: str = "00_welcome", submissions: int = 4,
                       jobs: tuple[int, ...] = (1, 2)) -> dict:
    """Autograde ``submissions`` model solutions of ``lesson`` into a fresh course folder at each
    job count; submissions per minute (release and the first import of nbgrader not counted)."""
    from course_lib import grading, sandbox

    use_sandbox = sandbox.sandbox_problem() is None
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        for n_jobs in jobs:
            course = Path(tmp) / f"course-{n_jobs}"
            released = grading.release(ROOT / "notebooks", course, None, [lesson])[0]
            subs = Path(tmp) / f"subs-{n_jobs}"
            for i in range(submissions):
                _model_submission(released, ROOT / "notebooks" / f"{lesson}.ipynb",
                                  subs / f"student{i:03d}" / lesson / f"{lesson}.ipynb")
            start = time.perf_counter()
            status = grading.autograde(subs, course, [lesson], jobs=n_jobs, use_sandbox=use_sandbox)
            seconds = time.perf_counter() - start
            graded = sum(s[lesson] == "graded" for s in status.values())
            runs[n_jobs] = {"seconds": seconds, "per_minute": 60 * submissions / seconds, "graded": graded}
            shutil.rmtree(course, ignore_errors=True)
    return {"lesson": lesson, "submissions": submissions, "sandbox": use_sandbox, "runs": runs}


def make_test_seconds() -> tuple[float, int]:
    start = time.perf_counter()
    rc = subprocess.run(["make", "test"], cwd=ROOT, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--skip-tests", action="store_true", help="do not time `make test`")
    parser.add_argument("--speed-only", action="store_true",
                        help="only compare fit with a bare PyTorch loop (exits 1 when a target is missed)")
    parser.add_argument("--skip-grading", action="store_true", help="do not measure autograding")
    parser.add_argument("--grading-only", action="store_true", help="measure only autograding")
    parser.add_argument("--grading-submissions", type=int, default=4, help="submissions per run")
    parser.add_argument("lessons", nargs="*", help="notebook paths (default: every lesson)")
    args = parser.parse_args(argv)
    if args.speed_only:
        tr = training_overhead()
        print(json.dumps(tr, indent=1))
        missed = [f"{k} {tr[k]:.3f}x > {TARGETS[t]}x" for k, t in
                  (("fit_ratio", "fit_overhead"), ("recorded_ratio", "record_overhead"))
                  if tr[k] > TARGETS[t]]
        print("Targets missed: " + ("; ".join(missed) if missed else "none") + ".")
        return 1 if missed else 0
    lessons = [Path(p) for p in args.lessons] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}, "lessons": {}}
    try:
        import torch
        results["machine"]["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                        else "CPU only")
    except Exception:
        results["machine"]["device"] = "unknown"
    if args.grading_only:
        return _grading_report(args, results)
    for path in lessons:
        print(f"running {path.name} ...", flush=True)
        results["lessons"][path.stem] = run_notebook(path)
    results["course_seconds"] = sum(r["seconds"] for r in results["lessons"].values())
    print("measuring the training loop against a bare PyTorch loop ...", flush=True)
    results["training"] = training_overhead()
    results["import_course_lib_seconds"] = import_overhead()
    results["import_baseline_gb"] = import_baseline_gb()
    results["import_lesson_modules_seconds"] = import_overhead(
        "course_lib.data, course_lib.models, course_lib.instrument, course_lib.train, course_lib.plots")
    if not args.skip_tests:
        print("timing make test ...", flush=True)
        results["make_test_seconds"], results["make_test_rc"] = make_test_seconds()
    if not args.skip_grading:
        print("measuring autograding throughput ...", flush=True)
        results["grading"] = grading_throughput(submissions=args.grading_submissions)

    missed = []
    for name, r in results["lessons"].items():
        if r["error"]:
            missed.append(f"{name} failed: {r['error']}")
        if r["seconds"] > TARGETS["lesson_seconds"]:
            missed.append(f"{name} took {r['seconds']:.0f} s > {TARGETS['lesson_seconds']:.0f} s")
        if r["peak_gb"] > TARGETS["lesson_peak_gb"]:
            missed.append(f"{name} peaked at {r['peak_gb']:.2f} GB > {TARGETS['lesson_peak_gb']} GB")
    if results["course_seconds"] > 60 * TARGETS["course_minutes"]:
        missed.append(f"the course took {results['course_seconds'] / 60:.1f} min > {TARGETS['course_minutes']:.0f} min")
    tr = results["training"]
    if tr["fit_ratio"] > TARGETS["fit_overhead"]:
        missed.append(f"fit(record=False) takes {tr['fit_ratio']:.3f}x a bare loop > "
                      f"{TARGETS['fit_overhead']}x")
    if tr["recorded_ratio"] > TARGETS["record_overhead"]:
        missed.append(f"fit(record=True) takes {tr['recorded_ratio']:.3f}x a bare loop > "
                      f"{TARGETS['record_overhead']}x")
    if results["import_course_lib_seconds"] > TARGETS["import_seconds"]:
        missed.append(f"import course_lib adds {results['import_course_lib_seconds']:.2f} s > 1 s")
    if results.get("make_test_rc", 0) != 0:
        missed.append(f"make test failed (exit {results['make_test_rc']})")
    missed += _grading_missed(results)
    results["targets"], results["missed"] = TARGETS, missed

    lines = [f"# Benchmark ({results['machine']['cpus']} CPUs, {results['machine']['device']}, "
             f"Python {results['machine']['python']})", "",
             "| lesson | wall time (s) | kernel peak RSS (GB) | above the imports (GB) |",
             "|---|---:|---:|---:|"]
    base = results["import_baseline_gb"]
    for name, r in results["lessons"].items():
        flag = " (failed)" if r["error"] else ""
        lines.append(f"| {name}{flag} | {r['seconds']:.1f} | {r['peak_gb']:.2f} | {r['peak_gb'] - base:.2f} |")
    lines += [f"| **whole course** | **{results['course_seconds']:.0f}** | | |", "",
              f"- Peak RSS of the imports alone (torch, torchvision, matplotlib, scikit-learn, "
              f"ipykernel, course_lib): {base:.2f} GB."]
    ms = tr["ms_per_step"]
    lines += [f"- Training loop against a bare PyTorch loop ({tr['model']}, {tr['threads']} thread, "
              f"{tr['steps']} steps, interleaved): bare {ms['bare']:.2f} ms/step; "
              f"`fit(record=False)` **{tr['fit_ratio']:.3f}x** (target <= "
              f"{TARGETS['fit_overhead']}x); `fit(record=True)` at the default interval "
              f"**{tr['recorded_ratio']:.3f}x** (target <= {TARGETS['record_overhead']}x).",
              f"- `import course_lib` after torch: **{results['import_course_lib_seconds']:.2f} s** (target < 1 s); "
              f"with the modules a lesson uses (data, models, instrument, train, plots; these pull in "
              f"scikit-learn, torchvision and matplotlib): {results['import_lesson_modules_seconds']:.2f} s."]
    if "make_test_seconds" in results:
        lines.append(f"- `make test`: **{results['make_test_seconds'] / 60:.1f} min** (exit {results['make_test_rc']}).")
    lines += _grading_lines(results)
    lines += ["", "Targets missed: " + ("; ".join(missed) if missed else "none") + "."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    if missed:
        print("\nTARGETS MISSED:\n- " + "\n- ".join(missed), file=sys.stderr)
        return 1
    return 0


def _grading_lines(results: dict) -> list[str]:
    g = results.get("grading")
    if not g:
        return []
    runs = g["runs"]
    parts = [f"{j} job{'s' if j > 1 else ''}: **{r['per_minute']:.1f}/min** ({r['seconds']:.0f} s)"
             for j, r in sorted(runs.items(), key=lambda kv: int(kv[0]))]
    where = "in the bubblewrap sandbox" if g["sandbox"] else "WITHOUT the sandbox (it cannot start here)"
    return [f"- Autograding {g['submissions']} model solutions of {g['lesson']} {where}: " + "; ".join(parts) + "."]


def _grading_missed(results: dict) -> list[str]:
    g = results.get("grading")
    if not g:
        return []
    return [f"autograding with {j} job(s) graded {r['graded']} of {g['submissions']}"
            for j, r in g["runs"].items() if r["graded"] != g["submissions"]]


def _grading_report(args: argparse.Namespace, results: dict) -> int:
    print("measuring autograding throughput ...", flush=True)
    results["grading"] = grading_throughput(submissions=args.grading_submissions)
    results["missed"] = _grading_missed(results)
    lines = [f"# Autograding benchmark ({results['machine']['cpus']} CPUs)", ""] + _grading_lines(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grading.md").write_text("\n".join(lines) + "\n")
    (args.out / "grading.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 1 if results["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
