"""Run model SQL against a SQLite database without letting it change or hang anything.

Two layers of defence:

1. Inside SQLite: the file is opened read-only (``file:...?mode=ro``) with ``PRAGMA
   query_only=ON``; an authorizer allows only reading (SELECT, reads, functions, recursive CTEs
   and a few read-only pragmas), so writes, DDL, ATTACH, state-changing pragmas and
   ``load_extension`` are refused at prepare time; ``SQLITE_LIMIT_LENGTH`` caps every string or
   blob (``randomblob(1e9)`` fails fast); ``hard_heap_limit`` caps SQLite's memory; a progress
   handler interrupts the statement at its deadline (it fires inside blocking calls, unlike a
   timer in another thread).
2. Around SQLite: every query runs in a worker process (:class:`Sandbox`) with an address-space
   limit. The parent waits for the answer for the time limit plus a grace period, then kills the
   worker and starts a fresh one, so a runaway query cannot stall the evaluation.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

# pragmas that only read; any other pragma is refused
READ_ONLY_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "database_list", "collation_list", "function_list", "table_list", "pragma_list",
})
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}


@dataclass
class ExecutionResult:
    ok: bool
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None
    elapsed: float = 0.0  # seconds spent executing and fetching
    timed_out: bool = False
    truncated: bool = False  # more than max_rows rows: only the first max_rows are kept


def _authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        # a listed pragma only reads, whatever its argument (table_info(t)); others may write
        ok = str(arg1).lower() in READ_ONLY_PRAGMAS
        return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


def _decode_text(b: bytes) -> str:
    # what the official Spider evaluator does: invalid UTF-8 is dropped, not an error
    return b.decode(errors="ignore")


class _QueryRunner:
    """Runs queries in-process with SQLite's own limits; keeps a few connections open."""

    def __init__(self, max_bytes: int = 100_000_000, heap_bytes: int = 1 << 30, cache: int = 16):
        self.max_bytes = max_bytes
        self.cache = cache
        self.connections: dict[str, sqlite3.Connection] = {}
        self.deadline = float("inf")
        self.heap_bytes = heap_bytes

    def _connect(self, db_path: str) -> sqlite3.Connection:
        conn = self.connections.pop(db_path, None)
        if conn is None:
            if not os.path.isfile(db_path):
                raise FileNotFoundError(f"no database file at {db_path}")
            uri = "file:" + urllib.parse.quote(os.path.abspath(db_path)) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.text_factory = _decode_text
            conn.execute("PRAGMA query_only=ON")
            if self.heap_bytes:
                conn.execute(f"PRAGMA hard_heap_limit={int(self.heap_bytes)}")
            if hasattr(conn, "enable_load_extension"):
                conn.enable_load_extension(False)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_bytes)
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(lambda: int(time.monotonic() > self.deadline), 1000)
            if len(self.connections) >= self.cache:
                self.connections.pop(next(iter(self.connections))).close()
        self.connections[db_path] = conn  # most recently used last
        return conn

    def run(self, db_path: str, sql: str, timeout_s: float, max_rows: int) -> ExecutionResult:
        start = time.monotonic()
        self.deadline = start + timeout_s
        try:
            conn = self._connect(db_path)
            cur = conn.execute(sql)  # sqlite3 refuses more than one statement
            if cur.description is None:  # an empty string, a comment, a lone ";"
                raise sqlite3.ProgrammingError("the statement is not a query (it returns no columns)")
            rows = cur.fetchmany(max_rows + 1)
            cur.close()
            truncated = len(rows) > max_rows
            return ExecutionResult(True, rows[:max_rows], None, time.monotonic() - start, False, truncated)
        except Exception as exc:  # noqa: BLE001 - any failure of the query is its result
            elapsed = time.monotonic() - start
            timed_out = isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc)
            error = f"timed out after {timeout_s:g}s" if timed_out else f"{type(exc).__name__}: {exc}"
            return ExecutionResult(False, [], error, elapsed, timed_out)
        finally:
            self.deadline = float("inf")


def _limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size plus ``extra_bytes``."""
    try:
        import resource

        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm + extra_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, StopIteration, ValueError):
        pass  # not Linux: SQLite's own heap limit still applies


def _read_message(stream) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("pipe closed")
    size = int.from_bytes(header, "little")
    return pickle.loads(stream.read(size))


def _write_message(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _serve(max_bytes: int, heap_bytes: int, mem_bytes: int) -> None:
    """The worker's loop: read (db_path, sql, timeout_s, max_rows) requests from stdin, answer
    ExecutionResults on stdout."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answer pipe
    _limit_memory(mem_bytes)
    runner = _QueryRunner(max_bytes, heap_bytes)
    while True:
        try:
            request = _read_message(requests)
        except EOFError:
            return
        if request is None:
            return
        try:
            result = runner.run(*request)
        except MemoryError:
            result = ExecutionResult(False, [], "MemoryError: result too large")
        try:
            _write_message(answers, result)
        except MemoryError:
            _write_message(answers, ExecutionResult(False, [], "MemoryError: result too large"))


class Sandbox:
    """A worker process that runs one query at a time; killed and replaced on overrun.

    The worker is a fresh interpreter (``python -m vantage_core.evaluate.executor``), so it
    inherits no threads or heap from the caller and needs no ``__main__`` guard there.
    ``grace_s`` is how long past the query's own time limit the parent waits before it kills the
    worker (the in-process progress handler normally stops the query first).
    """

    def __init__(self, max_bytes: int = 100_000_000, heap_bytes: int = 1 << 30,
                 mem_bytes: int = 2 << 30, grace_s: float = 2.0):
        self.max_bytes, self.heap_bytes, self.mem_bytes, self.grace_s = max_bytes, heap_bytes, mem_bytes, grace_s
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "vantage_core.evaluate.executor",
               str(self.max_bytes), str(self.heap_bytes), str(self.mem_bytes)]
        env = dict(os.environ, VANTAGE_BLAS="none")  # the worker needs no BLAS threads
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
        self.process = None

    def execute(self, db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000) -> ExecutionResult:
        """Run one query; see :func:`execute`."""
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                self._kill()
                self.restarts += 1
            self._start()
        start = time.monotonic()
        try:
            _write_message(self.process.stdin, (str(db_path), sql, timeout_s, max_rows))
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_s + self.grace_s)
            if ready:
                return _read_message(self.process.stdout)
            error, timed_out = f"killed after {timeout_s + self.grace_s:g}s (hard limit)", True
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            # the worker died: memory cap reached, or a crash inside SQLite
            error, timed_out = f"worker died ({type(exc).__name__}: {exc})", False
        self._kill()
        self.restarts += 1
        return ExecutionResult(False, [], error, time.monotonic() - start, timed_out)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                _write_message(self.process.stdin, None)
                self.process.wait(1)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # a sandbox travels as its settings; each process starts its own worker
        return {k: v for k, v in self.__dict__.items() if k != "process"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.process = None


_default: tuple[int, Sandbox] | None = None


def default_sandbox() -> Sandbox:
    """This process's shared sandbox (one per process, created on first use)."""
    global _default
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), Sandbox())
        atexit.register(_default[1].close)
    return _default[1]


def execute(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000) -> ExecutionResult:
    """Run ``sql`` read-only on ``db_path`` in this process's sandbox worker.

    Never raises for a bad query: failures, refusals and time-outs come back as
    ``ExecutionResult(ok=False, error=..., timed_out=...)``.
    """
    return default_sandbox().execute(db_path, sql, timeout_s, max_rows)


def execute_unisolated(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000) -> ExecutionResult:
    """The same SQLite-level protections without the worker process (no hard kill, no memory
    cap): for trusted queries such as gold SQL where a process round trip is not worth it."""
    global _local_runner
    if _local_runner is None:
        _local_runner = _QueryRunner(heap_bytes=0)
    return _local_runner.run(str(db_path), sql, timeout_s, max_rows)


_local_runner: _QueryRunner | None = None


if __name__ == "__main__":
    # import ourselves by name so that pickled results name this module, not __main__
    from vantage_core.evaluate.executor import _serve as serve

    serve(*(int(a) for a in sys.argv[1:4]))
