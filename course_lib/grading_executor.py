"""Execute one submitted notebook inside the grading sandbox (see :mod:`course_lib.sandbox`).

Run as a script (``python -I grading_executor.py``), not as ``course_lib.grading_executor``: it
must not import ``course_lib`` (and PyTorch with it). It reads one JSON request on stdin::

    {"notebook": {...}, "cell_timeout": 120, "output_bytes": 8388608,
     "guards": {"<grade_id>": "<one line of code run before that test cell>"},
     "kernel_prefix": ["setpriv", ..., "prlimit", ..., "--"], "kernel_env": {...},
     "python": "/path/to/python", "cwd": "/home/student/work", "sandboxed": true}

executes the notebook with nbclient and the settings of nbgrader's ``Execute`` preprocessor (the same
per-cell timeout and error handling as ``nbgrader autograde``; nbgrader itself is not imported here,
which saves a second per submission) in a kernel started through ``kernel_prefix``, and writes one
JSON document on its standard output: ``{"notebook": {...}, "notes": [...]}``. The kernel gets
``/dev/null`` as its standard output and error, so it cannot write into that channel.

What it adds to nbgrader's execution:

- the outputs of the whole notebook are capped at ``output_bytes``; past it, outputs are dropped
  and the cell is interrupted;
- a kernel that dies (``os._exit``, a crash, the memory limit) or that still does not answer a few
  seconds after a cell's timeout (it ignores the interrupt) ends execution: that cell and every
  later one get an error output saying why, so their tests score zero;
- ``guards``: a line run in front of a test cell (the grader's check that the references the test
  compares against are still the course's own); the stored cell keeps its source.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
import traceback

NOT_RUN = "NotRun"
#: Written on stderr once the kernel is up: a failure before it is the grader's, not the student's.
STARTED = "grading-executor: kernel started"
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error", "update_display_data"}


def _make_client_class():
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import ensure_async
    from nbformat.notebooknode import NotebookNode

    class SandboxKernelManager(AsyncKernelManager):
        """The kernel runs as another user: let it read its connection file."""

        def write_connection_file(self, **kwargs):
            super().write_connection_file(**kwargs)
            os.chmod(self.connection_file, 0o644)

    class SandboxedClient(NotebookClient):
        """nbclient with nbgrader's execution settings (its ``Execute`` preprocessor: errors do not
        stop execution, a cell past the timeout is interrupted and fails with CellTimeoutError),
        plus an output cap, guards, and a stop when the kernel is gone."""

        def __init__(self, nb, output_bytes: int, guards: dict, **kwargs):
            super().__init__(nb, kernel_manager_class=SandboxKernelManager, allow_errors=True,
                             interrupt_on_timeout=True, raise_on_iopub_timeout=False,
                             error_on_timeout={"ename": "CellTimeoutError", "evalue": "", "traceback": [
                                 "CellTimeoutError: No reply from kernel before timeout"]},
                             record_timing=False, **kwargs)
            self.output_cap = output_bytes
            self.guards = guards
            self.output_used = 0
            self.capped_cells: set[int] = set()
            self.stopped: str | None = None
            self.reached = 0
            self.notes: list[str] = []

        # -- output cap -------------------------------------------------------------------------
        def process_message(self, msg, cell, cell_index):
            if msg["msg_type"] in OUTPUT_TYPES or msg["msg_type"].startswith("comm"):
                self.output_used += len(json.dumps(msg["content"], default=str))
                if self.output_used > self.output_cap:
                    kept = self._keep_past_cap(msg, cell)
                    if kept is not None:  # errors and a first stderr line still fail the cell
                        return super().process_message(kept, cell, cell_index)
                    if cell_index not in self.capped_cells:
                        self.capped_cells.add(cell_index)
                        cell.outputs.append(NotebookNode(
                            output_type="stream", name="stdout",
                            text=f"\n[output cut: the notebook's outputs passed the limit of "
                                 f"{self.output_cap} bytes; the cell was interrupted]\n"))
                        self.notes.append(f"cell {cell_index}: output limit reached")
                        asyncio.ensure_future(ensure_async(self.km.interrupt_kernel()))
                    return None
            return super().process_message(msg, cell, cell_index)

        @staticmethod
        def _keep_past_cap(msg, cell):
            """Past the cap, an error or the cell's first stderr output is kept, shortened: both
            make nbgrader fail the cell, so dropping them would turn a failure into a pass."""
            content = msg["content"]
            if msg["msg_type"] == "error":
                short = dict(content, evalue=str(content.get("evalue", ""))[:500],
                             traceback=[str(t)[:500] for t in content.get("traceback", [])[-10:]])
                return dict(msg, content=short)
            if (msg["msg_type"] == "stream" and content.get("name") == "stderr"
                    and not any(o.get("name") == "stderr" for o in cell.outputs)):
                return dict(msg, content=dict(content, text=str(content.get("text", ""))[:500]))
            return None

        def on_cell_executed(self, **kwargs):
            """As nbgrader's Execute: an error reply without an error output (a timeout) is added."""
            cell, reply = kwargs["cell"], kwargs["execute_reply"]
            if reply and reply["content"]["status"] == "error" and not any(
                    o.output_type == "error" and o.ename == reply["content"]["ename"] for o in cell.outputs):
                cell.outputs.append(NotebookNode(output_type="error", ename=reply["content"]["ename"],
                                                 evalue=reply["content"]["evalue"],
                                                 traceback=reply["content"]["traceback"] or ["ERROR"]))

        # -- guards, dead or stuck kernels -------------------------------------------------------
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type != "code":
                return cell
            self.reached = cell_index
            if self.stopped:
                cell.outputs = [_error(NOT_RUN, f"not run: {self.stopped}")]
                return cell
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            original = cell.source
            if grade_id in self.guards and original.strip():
                cell.source = self.guards[grade_id] + "\n" + original
            try:
                await super().async_execute_cell(cell, cell_index, None, store_history)
            except DeadKernelError:
                self.stopped = f"the kernel died in cell {cell_index}{self._exit_status()}"
                cell.outputs.append(_error("DeadKernelError", self.stopped))
            except CellTimeoutError:
                cell.outputs.append(_error("CellTimeoutError", f"cell {cell_index} ran past {self.timeout} s"))
            finally:
                cell.source = original
            if not self.stopped and any(o.get("ename") == "CellTimeoutError" for o in cell.outputs):
                if not await self._responds(3):
                    self.stopped = (f"the kernel did not stop within {self.timeout} s in cell "
                                    f"{cell_index} and ignored the interrupt")
                    try:
                        await ensure_async(self.km.kill_kernel())
                    except Exception:
                        pass
            if self.stopped:
                self.notes.append(self.stopped)
            return cell

        def _exit_status(self) -> str:
            try:
                code = self.km.provisioner.process.poll()
            except Exception:
                return ""
            if code is None:
                return ""
            return f" (killed by signal {-code})" if code < 0 else f" (exit code {code})"

        async def _responds(self, seconds: float) -> bool:
            try:
                await ensure_async(self.kc.wait_for_ready(timeout=seconds))
                return True
            except Exception:
                return False

    return SandboxedClient


def _error(ename: str, evalue: str):
    from nbformat.notebooknode import NotebookNode
    return NotebookNode(output_type="error", ename=ename, evalue=evalue,
                        traceback=[f"{ename}: {evalue}"])


def _write_kernelspec(data_dir: str, request: dict) -> None:
    spec_dir = os.path.join(data_dir, "kernels", "grading")
    os.makedirs(spec_dir, exist_ok=True)
    argv = list(request["kernel_prefix"]) + [request["python"], "-m", "ipykernel_launcher",
                                               "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "grading sandbox", "language": "python",
            "interrupt_mode": "signal", "env": request["kernel_env"]}
    with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
        json.dump(spec, fh)


def _not_dumpable() -> None:
    """No other process of this user may read this one's memory or file descriptors."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


def main() -> int:
    _not_dumpable()
    request = json.loads(sys.stdin.buffer.read())
    # Our own channel back; the kernel inherits /dev/null on 0, 1 and 2.
    channel = os.fdopen(os.dup(1), "w")
    log = os.fdopen(os.dup(2), "w")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    runtime = os.path.join(os.environ.get("HOME", "/run/grader"), "jupyter")
    os.environ.update(JUPYTER_RUNTIME_DIR=os.path.join(runtime, "runtime"),
                      JUPYTER_DATA_DIR=os.path.join(runtime, "data"),
                      JUPYTER_CONFIG_DIR=os.path.join(runtime, "config"),
                      JUPYTER_PATH=os.path.join(runtime, "data"))
    os.makedirs(os.environ["JUPYTER_RUNTIME_DIR"], mode=0o755, exist_ok=True)
    _write_kernelspec(os.environ["JUPYTER_DATA_DIR"], request)
    cwd = request.get("cwd") or os.getcwd()
    os.makedirs(cwd, exist_ok=True)
    os.chmod(cwd, 0o1777)

    import nbformat

    nb = nbformat.from_dict(request["notebook"])
    client = _make_client_class()(
        nb, request["output_bytes"], request.get("guards", {}), timeout=int(request["cell_timeout"]),
        kernel_name="grading", startup_timeout=120, shutdown_kernel="immediate",
        resources={"metadata": {"path": cwd}})
    def started(**kwargs) -> None:
        log.write(STARTED + "\n")
        log.flush()

    client.on_notebook_start = started
    try:
        # In the sandbox the kernel dies with it: no shutdown handshake to wait for.
        client.execute(cleanup_kc=not request.get("sandboxed", False))
    except Exception as err:  # the kernel did not start, or nbclient failed: say so
        traceback.print_exc(file=log)
        log.flush()
        client.stopped = client.stopped or f"execution failed: {type(err).__name__}: {str(err)[:300]}"
        client.notes.append(client.stopped)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and index >= client.reached:
                cell.outputs = [_error(NOT_RUN, f"not run: {client.stopped}")]
    json.dump({"notebook": nb, "notes": client.notes}, channel)
    channel.flush()
    os._exit(0)  # no interpreter teardown (zmq, asyncio): the result is written


if __name__ == "__main__":
    sys.exit(main())
