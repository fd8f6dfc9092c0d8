"""Run one student's notebook in a bubblewrap sandbox and bring back the executed notebook.

The grader (the parent process, which alone owns nbgrader's gradebook) starts one ``bwrap``
process per submission. Inside it, :mod:`course_lib.grading_executor` executes the notebook with
nbgrader's own ``Execute`` preprocessor and a kernel that runs as another, unprivileged user.
What the sandbox holds:

- read-only: the operating system's ``/usr`` (with ``/bin``, ``/lib``...), a few files of
  ``/etc`` (dynamic loader cache, fonts, time zone), the Python installation and environment, and
  the ``course_lib`` package: nothing else of the course folder (no source notebooks, gradebook,
  release, other submissions);
- writable: ``/home/student`` (the kernel's working folder and home), ``/tmp`` and ``/dev/shm``,
  each a ``tmpfs`` of bounded size (the disk limit); nothing the grader reads back;
- no network (its own network namespace with only a loopback), its own PID namespace (the
  grader's processes are invisible, so they cannot be signalled), its own IPC and UTS namespaces,
  ``--die-with-parent`` (nothing outlives the grader) and ``--new-session``.

Limits (:class:`Limits`): memory per process (``RLIMIT_DATA``: PyTorch maps about 2 GB of shared
libraries, so an address-space limit cannot be used), number of processes and threads
(``RLIMIT_NPROC``), wall-clock time per cell (nbgrader's per-cell timeout, enforced by the executor)
and per notebook (enforced here), output size (enforced by the executor, and here on what comes
back) and disk (the ``tmpfs`` sizes).

``RLIMIT_NPROC`` counts every process of a user. When the grader runs as root, the kernel therefore
runs as its own unprivileged user id (:data:`SANDBOX_UID_BASE` + job slot, one per parallel job,
set with ``setpriv``); that user cannot signal or inspect the executor, which stays root inside
the sandbox with only the capabilities it needs to start the kernel. For an ordinary user, bwrap
creates a user namespace and counts the processes there. The one channel back is the executor's
standard output: one JSON document with the executed notebook, read with a size cap.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Kernels of parallel jobs run as SANDBOX_UID_BASE + slot when the grader runs as root. These ids
#: belong to no account; each job has its own so that the process limit is per job.
SANDBOX_UID_BASE = 2_000_000_000
HOME = "/home/student"
WORKDIR = f"{HOME}/work"
EXECUTOR = Path(__file__).with_name("grading_executor.py")
#: What the executor writes on its standard error once the kernel is up (grading_executor.STARTED).
STARTED = "grading-executor: kernel started"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/fonts",
              "/etc/localtime", "/etc/alternatives", "/etc/mime.types")
_GB, _MB = 1024**3, 1024**2


@dataclass(frozen=True)
class Limits:
    """What one submission may use. Every field must be a positive integer."""

    memory_bytes: int = 2 * _GB      #: heap and private memory of each process (RLIMIT_DATA)
    processes: int = 256             #: processes and threads of the kernel (RLIMIT_NPROC)
    cell_timeout_s: int = 120        #: wall-clock time per cell, then the kernel is interrupted
    output_bytes: int = 8 * _MB      #: all outputs of one notebook; more is dropped, the cell stopped
    disk_bytes: int = 512 * _MB      #: size of the writable home folder (and of /tmp, /dev/shm)
    threads: int = 1                 #: OMP/MKL threads of the kernel (one per job is fastest)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}; valid "
                                 f"fields: {', '.join(vars(self))}")

    def notebook_timeout_s(self, code_cells: int) -> int:
        """Wall-clock limit for a whole notebook: every cell at its limit, plus start-up."""
        return (self.cell_timeout_s + 15) * max(code_cells, 1) + 60


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here."""


@dataclass
class JobResult:
    """What came back from one sandboxed run."""

    returncode: int | None
    stdout: bytes
    stderr_tail: str
    timed_out: bool
    overflow: bool
    seconds: float
    started: bool = False  #: the executor said the kernel was up (student code may have run)


def package_dir() -> Path:
    """The folder of the course_lib package that this grader imports (bound into the sandbox)."""
    spec = importlib.util.find_spec("course_lib")
    if spec is None or spec.origin is None:
        raise RuntimeError("course_lib is not importable")
    return Path(spec.origin).resolve().parent


def python_path() -> str:
    """This environment's interpreter by a path that exists in the sandbox: its folder resolved
    (a ``.venv`` that is a link to another environment), not the interpreter itself (a venv's
    ``python`` is a link to the base interpreter, which would leave the venv)."""
    return str(Path(sys.executable).parent.resolve() / Path(sys.executable).name)


def _python_dirs() -> list[Path]:
    """The interpreter's installation and the environment (venv), resolved."""
    dirs = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve(),
            Path(sys.executable).resolve().parent.parent}
    keep = []
    for d in sorted(dirs, key=lambda p: len(p.parts)):
        if any(d == k or k in d.parents for k in keep):
            continue
        if any(str(d) == s or str(d).startswith(s + "/") for s in _SYSTEM_DIRS):
            continue
        keep.append(d)
    return keep


def _bind_ro(args: list[str], path: Path, made: set[str]) -> None:
    """Bind ``path`` read-only at the same place, creating its parents world-readable."""
    for parent in reversed(path.parents):
        p = str(parent)
        if p == "/" or p in made:
            continue
        args += ["--perms", "0755", "--dir", p]
        made.add(p)
    args += ["--ro-bind", str(path), str(path)]
    made.add(str(path))


def running_as_root() -> bool:
    return os.geteuid() == 0


def bwrap_command(limits: Limits, bwrap: str = "bwrap") -> list[str]:
    """The command that runs the executor in a fresh sandbox (it reads its request on stdin)."""
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    made: set[str] = set()
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
        made.add(d)
    args += ["--dev", "/dev", "--proc", "/proc"]
    size = str(limits.disk_bytes)
    for mount, perms, bytes_ in (("/tmp", "1777", size), ("/dev/shm", "1777", size),
                                 (HOME, "1777", size), ("/run/grader", "0755", str(16 * _MB))):
        args += ["--size", bytes_, "--perms", perms, "--tmpfs", mount]
        made.add(mount)
    # After the tmpfs mounts, so that an environment or checkout under /tmp stays visible.
    for f in _ETC_FILES:
        if os.path.exists(f):
            _bind_ro(args, Path(f), made)
    for d in _python_dirs():
        _bind_ro(args, d, made)
    _bind_ro(args, package_dir(), made)
    args += ["--remount-ro", "/", "--clearenv",
             "--setenv", "PATH", f"{Path(python_path()).parent}:/usr/local/bin:/usr/bin:/bin",
             "--setenv", "HOME", "/run/grader", "--setenv", "LANG", "C.UTF-8",
             "--setenv", "TMPDIR", "/tmp", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
             "--chdir", "/run/grader"]
    if running_as_root():
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    args += ["prlimit", f"--data={limits.memory_bytes}", "--core=0", "--",
             python_path(), "-I", str(EXECUTOR)]
    return args


def kernel_prefix(limits: Limits, slot: int = 0, sandboxed: bool = True) -> list[str]:
    """What the executor puts in front of ``python -m ipykernel_launcher``: the kernel's own user
    (as root, in the sandbox) and its limits."""
    prefix = []
    extra = 0
    if not sandboxed:
        return ["prlimit", f"--data={limits.memory_bytes}", "--core=0", "--"] if shutil.which("prlimit") else []
    if running_as_root():
        uid = SANDBOX_UID_BASE + slot
        prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    else:  # the executor's threads share the user namespace's count
        extra = 64
    prefix += ["prlimit", f"--nproc={limits.processes + extra}", f"--data={limits.memory_bytes}",
               "--core=0", "--"]
    return prefix


def kernel_env(limits: Limits, home: str = HOME) -> dict[str, str]:
    """The kernel's environment (on top of the executor's, which the sandbox clears)."""
    threads = str(limits.threads)
    return {
        "HOME": home, "USER": "student", "LOGNAME": "student", "LANG": "C.UTF-8",
        "PYTHONPATH": str(package_dir().parent), "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": f"{home}/.config/matplotlib", "IPYTHONDIR": f"{home}/.ipython",
        "JUPYTER_CONFIG_DIR": f"{home}/.jupyter", "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
        "XDG_CACHE_HOME": f"{home}/.cache", "XDG_CONFIG_HOME": f"{home}/.config",
        "COURSE_DATA_DIR": f"{home}/data", "NBGRADER_EXECUTION": "autograde",
        "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def plain_command(limits: Limits) -> list[str]:
    """The executor without a sandbox (``--no-sandbox``): same protocol, the instructor's rights."""
    prefix = ["prlimit", f"--data={limits.memory_bytes}", "--core=0", "--"] if shutil.which("prlimit") else []
    return prefix + [python_path(), "-I", str(EXECUTOR)]


def sandbox_problem(bwrap: str = "bwrap") -> str | None:
    """Why the sandbox cannot run a kernel here, or None when it can: starts one sandbox and, in
    it, this environment's Python as the kernel would run (its user, its limits)."""
    path = shutil.which(bwrap)
    if path is None:
        return f"'{bwrap}' was not found (install bubblewrap: apt-get install bubblewrap)"
    for tool in ("prlimit", "setpriv") if running_as_root() else ("prlimit",):
        if shutil.which(tool) is None:
            return f"'{tool}' was not found (it comes with util-linux)"
    limits = Limits()
    cmd = bwrap_command(limits, path)
    cmd = cmd[:cmd.index("prlimit")] + kernel_prefix(limits, 0) + [
        python_path(), "-I", "-c", "import ipykernel"]
    try:
        probe = subprocess.run(cmd, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bubblewrap did not run: {err}"
    if probe.returncode != 0:
        return "a kernel cannot start in the sandbox: " + (
            probe.stderr.decode(errors="replace").strip()[-300:] or f"exit code {probe.returncode}")
    return None


class Runner:
    """Starts sandboxed jobs and can stop all of them at once (Ctrl-C, an error in the grader)."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, cmd: Sequence[str], request: bytes, timeout_s: float, max_stdout: int,
            env: dict[str, str] | None = None) -> JobResult:
        """Run ``cmd`` with ``request`` on stdin; keep at most ``max_stdout`` bytes of stdout and
        the end of stderr; kill the whole job after ``timeout_s``."""
        start = time.monotonic()
        with self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, env=env)
            self._procs.add(proc)
        out: list[bytes] = []
        err: list[bytes] = []
        flags = {"overflow": False, "started": False}

        def feed() -> None:
            try:
                proc.stdin.write(request)
                proc.stdin.close()
            except OSError:  # the job ended before reading everything
                pass

        def drain_out() -> None:
            size = 0
            for chunk in iter(lambda: proc.stdout.read(65536), b""):
                size += len(chunk)
                if size > max_stdout:
                    flags["overflow"] = True
                    _kill(proc)
                    break
                out.append(chunk)

        def drain_err() -> None:
            for chunk in iter(lambda: proc.stderr.read(65536), b""):
                flags["started"] = flags["started"] or STARTED.encode() in chunk
                err.append(chunk)
                if len(err) > 4:
                    del err[0]

        threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain_out, drain_err)]
        for t in threads:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            proc.wait()
        finally:
            for t in threads:
                t.join(timeout=10)
            with self._lock:
                self._procs.discard(proc)
        tail = b"".join(err)[-4000:].decode(errors="replace")
        return JobResult(proc.returncode, b"".join(out), tail, timed_out, flags["overflow"],
                         time.monotonic() - start, flags["started"])

    def stop_all(self) -> None:
        """Kill every running job (their sandboxes die with them)."""
        with self._lock:
            self.stopping = True
            for proc in list(self._procs):
                _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
