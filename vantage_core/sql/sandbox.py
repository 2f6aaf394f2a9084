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

The worker runs whatever runner it is sent first (SQLite's :class:`_QueryRunner` by default; the
DuckDB connector sends its own), so every engine that runs in-process gets the same outside
limits: the address-space cap, the kill at the deadline, one request at a time per worker.
Each answer carries the worker's peak resident memory while it ran the query (``peak_bytes``).

A :class:`Sandbox` serves one caller at a time (a lock spans each request and its answer, and
every answer carries its request's id), so threads never receive each other's rows; the
module-level :func:`execute` spreads threads over a small :class:`SandboxPool`. Results are
capped in rows and in bytes; with ``digest=True`` the worker reads the whole result and hashes
it, so that two results cut at the cap are still compared in full
(:func:`~vantage_core.sql.result.same_result`).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import select
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from vantage_core.sql.result import DEFAULT_RESULT_BYTES, ExecutionResult, fetch_bounded
from vantage_core.sql.sqlite_file import file_signature, readonly_uri

# pragmas that only read; any other pragma is refused. database_list is not among them: it
# returns the server's absolute path of the database file.
READ_ONLY_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "collation_list", "function_list", "table_list", "pragma_list",
})
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}


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


def _warm_pragma_tables(conn: sqlite3.Connection) -> None:
    """Connect the read-only pragma functions (``pragma_table_info(...)``) before the authorizer
    is set: their first use declares a virtual table, which the authorizer would see as a write
    of ``sqlite_master`` and refuse, though they only read."""
    for name in sorted(READ_ONLY_PRAGMAS):
        try:
            conn.execute(f"SELECT * FROM pragma_{name} LIMIT 0").fetchall()
        except sqlite3.Error:
            pass  # this SQLite lacks that pragma function


class _QueryRunner:
    """Runs queries in-process with SQLite's own limits; keeps a few connections open."""

    def __init__(self, max_bytes: int = 100_000_000, heap_bytes: int = 1 << 30, cache: int = 16):
        self.max_bytes = max_bytes
        self.cache = cache
        # path -> (connection, the file's signature when it was opened)
        self.connections: dict[str, tuple[sqlite3.Connection, tuple]] = {}
        self.deadline = float("inf")
        self.heap_bytes = heap_bytes

    def prepare(self) -> None:
        """What the worker loads before its memory cap (sqlite3 is loaded already)."""

    def _connect(self, db_path: str) -> sqlite3.Connection:
        """A cached connection, reopened when the file was written, replaced or got a ``-wal``
        since it was opened (an ``immutable`` connection would not see the change)."""
        conn, signature = self.connections.pop(db_path, (None, ()))
        if conn is not None and signature != file_signature(db_path):
            conn.close()
            conn = None
        if conn is None:
            if not os.path.isfile(db_path):
                # the file name only: the server's folders are nobody's business
                raise FileNotFoundError(f"no database file {os.path.basename(db_path)!r}")
            signature = file_signature(db_path)
            conn = sqlite3.connect(readonly_uri(db_path), uri=True, check_same_thread=False, isolation_level=None)
            conn.text_factory = _decode_text
            conn.execute("PRAGMA query_only=ON")
            if self.heap_bytes:
                conn.execute(f"PRAGMA hard_heap_limit={int(self.heap_bytes)}")
            if hasattr(conn, "enable_load_extension"):
                conn.enable_load_extension(False)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_bytes)
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            _warm_pragma_tables(conn)
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(lambda: int(time.monotonic() > self.deadline), 1000)
            if len(self.connections) >= self.cache:
                self.connections.pop(next(iter(self.connections)))[0].close()
        self.connections[db_path] = (conn, signature)  # most recently used last
        return conn

    def run(self, db_path: str, sql: str, timeout_s: float, max_rows: int,
            max_result_bytes: int = DEFAULT_RESULT_BYTES, digest: bool = False) -> ExecutionResult:
        start = time.monotonic()
        self.deadline = start + timeout_s
        try:
            conn = self._connect(db_path)
            cur = conn.execute(sql)  # sqlite3 refuses more than one statement
            if cur.description is None:  # an empty string, a comment, a lone ";"
                raise sqlite3.ProgrammingError("the statement is not a query (it returns no columns)")
            result = fetch_bounded(cur, max_rows, max_result_bytes, digest)
            cur.close()
            result.elapsed = time.monotonic() - start
            return result
        except Exception as exc:  # noqa: BLE001 - any failure of the query is its result
            elapsed = time.monotonic() - start
            timed_out = isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc)
            error = f"timed out after {timeout_s:g}s" if timed_out else f"{type(exc).__name__}: {exc}"
            return ExecutionResult(False, [], error, elapsed, timed_out)
        finally:
            self.deadline = float("inf")


def _status_bytes(key: str) -> int | None:
    """A size from this process's ``/proc/self/status`` (``VmSize``, ``VmHWM``) in bytes; None
    off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration, ValueError):
        return None


def _limit_memory(extra_bytes: int) -> int | None:
    """Cap this process's address space at its current size plus ``extra_bytes``; the cap, or
    None where it cannot be set (not Linux: SQLite's own heap limit still applies)."""
    try:
        import resource
    except ImportError:
        return None
    size = _status_bytes("VmSize")
    if size is None:
        return None
    limit = size + extra_bytes
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):  # a lower hard limit is already set: it stands
        return None
    return limit


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


def _reset_peak_memory() -> None:
    """Start a new peak resident-memory count for this process (Linux's ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _should_retire(base: int | None, retire_bytes: int) -> bool:
    """Whether the worker's address space grew more than ``retire_bytes`` past ``base`` (its size
    when capped): allocators keep address space they freed (DuckDB's after a large string), so a
    worker that grew is replaced before an ordinary query fails against its cap."""
    size = _status_bytes("VmSize")
    return base is not None and size is not None and size - base > retire_bytes


def _answer(runner: Any, query: tuple) -> ExecutionResult:
    """One query's result, with the worker's peak memory while it ran."""
    _reset_peak_memory()
    try:
        result = runner.run(*query)
    except MemoryError:
        result = ExecutionResult(False, [], "MemoryError: result too large")
    result.peak_bytes = _status_bytes("VmHWM")
    return result


def _serve(mem_bytes: int, retire_bytes: int) -> None:
    """The worker's loop. The first message on stdin is the runner (an object whose
    ``prepare()`` loads its engine and whose ``run(db_path, sql, timeout_s, max_rows,
    max_result_bytes, digest)`` returns an :class:`ExecutionResult`); the worker then caps its
    address space, says ``ready``, and answers each ``(request_id, db_path, sql, ...)`` request
    with ``(request_id, ExecutionResult, retiring)`` on stdout; ``retiring`` says it exits after
    this answer, once its address space grew past ``retire_bytes`` (see :func:`_should_retire`)."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answer pipe
    try:
        runner = _read_message(requests)
    except EOFError:
        return
    runner.prepare()  # the engine's libraries count in the size the cap is measured from
    base = _status_bytes("VmSize") if _limit_memory(mem_bytes) else None
    _write_message(answers, "ready")
    retire = False
    while not retire:
        try:
            request = _read_message(requests)
        except EOFError:
            return
        if request is None:
            return
        request_id, query = request[0], request[1:]
        result = _answer(runner, query)
        retire = _should_retire(base, retire_bytes)
        try:
            _write_message(answers, (request_id, result, retire))
        except MemoryError:
            _write_message(answers, (request_id, ExecutionResult(False, [], "MemoryError: result too large"), True))
            return


class Sandbox:
    """A worker process that runs one query at a time; killed and replaced on overrun.

    The worker is a fresh interpreter (``python -m vantage_core.sql.sandbox``), so it
    inherits no threads or heap from the caller and needs no ``__main__`` guard there.
    ``grace_s`` is how long past the query's own time limit the parent waits before it kills the
    worker (the in-process progress handler normally stops the query first). ``mem_bytes`` is
    the worker's address space past its size once its engine is loaded. ``runner`` is what the
    worker runs queries with (see :func:`_serve`; it travels pickled, so its class must be
    importable by name): SQLite's sandboxed runner by default. A worker whose address space grew
    past ``retire_bytes`` (default: half of ``mem_bytes``) exits after its answer, and the next
    query starts a fresh one.
    """

    def __init__(self, max_bytes: int = 100_000_000, heap_bytes: int = 1 << 30, mem_bytes: int = 2 << 30,
                 grace_s: float = 2.0, result_bytes: int = DEFAULT_RESULT_BYTES, runner: Any = None,
                 retire_bytes: int | None = None, start_limit_s: float = 60.0):
        self.max_bytes, self.heap_bytes, self.mem_bytes, self.grace_s = max_bytes, heap_bytes, mem_bytes, grace_s
        self.result_bytes, self.start_limit_s = result_bytes, start_limit_s
        self.retire_bytes = mem_bytes // 2 if retire_bytes is None else retire_bytes
        self.runner = runner if runner is not None else _QueryRunner(max_bytes, heap_bytes)
        self.process: subprocess.Popen | None = None
        self.restarts = 0  # workers killed or found dead
        self.retired = 0  # workers that exited on their own to give back address space
        # one request and its answer at a time: two threads sharing the pipes would read each
        # other's answers (or wait forever for one the other already took)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _start(self) -> None:
        """A fresh worker, sent its runner; returns once it says it is ready (its start-up is not
        counted against the first query's time)."""
        cmd = [sys.executable, "-m", "vantage_core.sql.sandbox", str(self.mem_bytes), str(self.retire_bytes)]
        # no BLAS threads; one malloc arena (each more reserves 64 MB of the capped address space)
        env = dict(os.environ, VANTAGE_BLAS="none", MALLOC_ARENA_MAX="1")
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        _write_message(self.process.stdin, self.runner)
        ready, _, _ = select.select([self.process.stdout], [], [], self.start_limit_s)
        if not ready or _read_message(self.process.stdout) != "ready":
            raise OSError(f"the worker did not start within {self.start_limit_s:g}s")

    def _retire(self) -> None:
        """Let a worker that said it exits after its answer go (counted in ``retired``)."""
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._kill()
        self.retired += 1

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
        self.process = None

    def execute(self, db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000,
                max_result_bytes: int | None = None, digest: bool = False) -> ExecutionResult:
        """Run one query; see :func:`execute`. Safe to call from several threads (they wait
        their turn)."""
        with self._lock:
            return self._execute_locked(str(db_path), sql, timeout_s, max_rows,
                                        self.result_bytes if max_result_bytes is None else max_result_bytes, digest)

    def _execute_locked(self, db_path: str, sql: str, timeout_s: float, max_rows: int,
                        max_result_bytes: int, digest: bool) -> ExecutionResult:
        start = time.monotonic()
        request_id = next(self._ids)
        try:
            if self.process is None or self.process.poll() is not None:
                if self.process is not None:
                    self._kill()
                    self.restarts += 1
                self._start()  # may fail too (no processes left): an error result, not a raise
                start = time.monotonic()  # the query's time starts once its worker is ready
            _write_message(self.process.stdin, (request_id, db_path, sql, timeout_s, max_rows, max_result_bytes, digest))
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_s + self.grace_s)
            if ready:
                answer_id, result, retiring = _read_message(self.process.stdout)
                if answer_id == request_id:
                    if retiring:
                        self._retire()
                    return result
                # an answer to another request: the pipe is out of step, so trust nothing in it
                error, timed_out = "worker answered another request (restarted)", False
            else:
                error, timed_out = f"killed after {timeout_s + self.grace_s:g}s (hard limit)", True
        except (EOFError, OSError, pickle.UnpicklingError, TypeError, ValueError) as exc:
            # the worker died: memory cap reached, or a crash inside SQLite
            error, timed_out = f"worker died ({type(exc).__name__}: {exc})", False
        self._kill()
        self.restarts += 1
        return ExecutionResult(False, [], error, time.monotonic() - start, timed_out)

    def close(self) -> None:
        with self._lock:
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
        return {k: v for k, v in self.__dict__.items() if k not in ("process", "_lock", "_ids")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.process = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)


class SandboxPool:
    """Sandboxes shared by threads: a call borrows an idle worker (starting one while fewer
    than ``size`` exist, else waiting for one), so concurrent queries run side by side and
    never share a worker's pipes."""

    def __init__(self, size: int | None = None, **sandbox_settings: Any):
        self.size = max(1, size or min(4, os.cpu_count() or 1))
        self.sandbox_settings = sandbox_settings
        self._idle: list[Sandbox] = []
        self._all: list[Sandbox] = []
        self._changed = threading.Condition()

    def _borrow(self) -> Sandbox:
        with self._changed:
            while not self._idle and len(self._all) >= self.size:
                self._changed.wait()
            if self._idle:
                return self._idle.pop()
            box = Sandbox(**self.sandbox_settings)
            self._all.append(box)
            return box

    def _give_back(self, box: Sandbox) -> None:
        with self._changed:
            self._idle.append(box)
            self._changed.notify()

    def execute(self, db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000,
                max_result_bytes: int | None = None, digest: bool = False) -> ExecutionResult:
        """Run one query in a borrowed worker; see :func:`execute`."""
        box = self._borrow()
        try:
            return box.execute(db_path, sql, timeout_s, max_rows, max_result_bytes, digest)
        finally:
            self._give_back(box)

    @property
    def restarts(self) -> int:
        return sum(box.restarts for box in self._all)

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        with self._changed:
            return [box.process.pid for box in self._all if box.process is not None]

    def close(self) -> None:
        with self._changed:
            boxes = list(self._all)
        for box in boxes:
            box.close()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: tuple[int, SandboxPool] | None = None
_default_lock = threading.Lock()


def default_sandbox() -> SandboxPool:
    """This process's shared pool of sandboxes (one per process, created on first use)."""
    global _default
    with _default_lock:  # two threads' first calls must not make two pools
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), SandboxPool())
            atexit.register(_default[1].close)
        return _default[1]


def execute(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000,
            max_result_bytes: int | None = None, digest: bool = False) -> ExecutionResult:
    """Run ``sql`` read-only on ``db_path`` in one of this process's sandbox workers.

    Never raises for a bad query: failures, refusals and time-outs come back as
    ``ExecutionResult(ok=False, error=..., timed_out=...)``. Results are cut at ``max_rows``
    rows and ``max_result_bytes`` bytes (``truncated``); ``digest=True`` reads and hashes the
    whole result (see :func:`~vantage_core.sql.result.same_result`). Safe to call from any number of threads.
    """
    return default_sandbox().execute(db_path, sql, timeout_s, max_rows, max_result_bytes, digest)


def execute_unisolated(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10000,
                       max_result_bytes: int = DEFAULT_RESULT_BYTES, digest: bool = False) -> ExecutionResult:
    """The same SQLite-level protections without the worker process (no hard kill, no memory
    cap): for trusted queries such as gold SQL where a process round trip is not worth it.
    Each thread has its own connections (a runner's deadline belongs to one query)."""
    runner = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = _QueryRunner(heap_bytes=0)
    return runner.run(str(db_path), sql, timeout_s, max_rows, max_result_bytes, digest)


_local = threading.local()


if __name__ == "__main__":
    # import ourselves by name so that pickled results name this module, not __main__
    from vantage_core.sql.sandbox import _serve as serve

    serve(int(sys.argv[1]), int(sys.argv[2]))
