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

A :class:`Sandbox` serves one caller at a time (a lock spans each request and its answer, and
every answer carries its request's id), so threads never receive each other's rows; the
module-level :func:`execute` spreads threads over a small :class:`SandboxPool`. Results are
capped in rows and in bytes; with ``digest=True`` the worker reads the whole result and hashes
it, so that two results cut at the cap are still compared in full (:func:`same_result`).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import pickle
import select
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

# pragmas that only read; any other pragma is refused. database_list is not among them: it
# returns the server's absolute path of the database file.
READ_ONLY_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "collation_list", "function_list", "table_list", "pragma_list",
})
# what a result may hold in the parent by default: rows past this many bytes are cut (truncated)
DEFAULT_RESULT_BYTES = 32 << 20
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}


@dataclass
class ExecutionResult:
    ok: bool
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None
    elapsed: float = 0.0  # seconds spent executing and fetching
    timed_out: bool = False
    truncated: bool = False  # over max_rows rows or max_result_bytes bytes: only the first ones are kept
    n_rows: int | None = None  # rows in the whole result (None when reading stopped at the cap)
    digest: str | None = None  # hash of the whole result as a multiset of rows (with digest=True)
    ordered_digest: str | None = None  # hash of the whole result as a sequence of rows


def same_result(gold: ExecutionResult, pred: ExecutionResult, order_matters: bool, equal_rows) -> bool:
    """Whether two successful results are the same, comparing complete results only.

    ``equal_rows(gold_rows, pred_rows, order_matters)`` decides for two complete results (the
    benchmark's own semantics). A result cut at the cap is never equal to a complete one; two
    cut results are equal only when their digests of every row agree (same row count, same rows
    with the same column order), and never when a digest is missing.
    """
    if not gold.truncated and not pred.truncated:
        return equal_rows(gold.rows, pred.rows, order_matters)
    if not (gold.truncated and pred.truncated and gold.digest and pred.digest):
        return False
    if gold.n_rows != pred.n_rows:
        return False
    if order_matters:
        return gold.ordered_digest == pred.ordered_digest
    return gold.digest == pred.digest


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


def _row_bytes(row: tuple) -> int:
    """About what ``row`` costs once pickled: its text and blobs, 8 bytes per other value."""
    return 16 + sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)


def _value_bytes(value: Any) -> bytes:
    """A value's bytes for hashing; numbers equal in Python (1 and 1.0) hash the same."""
    if value is None:
        return b"n"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"s" + len(data).to_bytes(8, "little") + data
    data = bytes(value)
    return b"b" + len(data).to_bytes(8, "little") + data


class _ResultHasher:
    """Digests of a whole result: as a multiset of rows (a sum of row hashes, so row order
    does not matter) and as a sequence of rows (a running hash)."""

    _MOD = 1 << 128

    def __init__(self) -> None:
        self.multiset = 0
        self.sequence = hashlib.blake2b(digest_size=16)

    def add(self, row: tuple) -> None:
        h = hashlib.blake2b(digest_size=16)
        for value in row:
            h.update(_value_bytes(value))
        h.update(b"|%d" % len(row))  # (a, b) and (ab,) differ
        row_digest = h.digest()
        self.multiset = (self.multiset + int.from_bytes(row_digest, "little")) % self._MOD
        self.sequence.update(row_digest)

    def digests(self) -> tuple[str, str]:
        return f"{self.multiset:032x}", self.sequence.hexdigest()


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
        self.connections: dict[str, sqlite3.Connection] = {}
        self.deadline = float("inf")
        self.heap_bytes = heap_bytes

    def _connect(self, db_path: str) -> sqlite3.Connection:
        conn = self.connections.pop(db_path, None)
        if conn is None:
            if not os.path.isfile(db_path):
                # the file name only: the server's folders are nobody's business
                raise FileNotFoundError(f"no database file {os.path.basename(db_path)!r}")
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
            _warm_pragma_tables(conn)
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(lambda: int(time.monotonic() > self.deadline), 1000)
            if len(self.connections) >= self.cache:
                self.connections.pop(next(iter(self.connections))).close()
        self.connections[db_path] = conn  # most recently used last
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
            result = self._fetch(cur, max_rows, max_result_bytes, digest)
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

    @staticmethod
    def _fetch(cur: sqlite3.Cursor, max_rows: int, max_result_bytes: int, digest: bool) -> ExecutionResult:
        """The rows up to the row and byte caps; with ``digest``, every row is read and hashed
        (one at a time, so a long result costs time, bounded by the deadline, not memory)."""
        rows: list[tuple] = []
        kept_bytes, seen, truncated = 0, 0, False
        hasher = _ResultHasher() if digest else None
        for row in cur:
            seen += 1
            if hasher is not None:
                hasher.add(row)
            if not truncated:
                size = _row_bytes(row)
                if len(rows) < max_rows and kept_bytes + size <= max_result_bytes:
                    rows.append(row)
                    kept_bytes += size
                else:
                    truncated = True
            if truncated and hasher is None:
                break  # no digest asked: nothing past the cap is needed
        result = ExecutionResult(True, rows, None, 0.0, False, truncated)
        if hasher is not None or not truncated:
            result.n_rows = seen
        if hasher is not None:
            result.digest, result.ordered_digest = hasher.digests()
        return result


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
    """The worker's loop: read ``(request_id, db_path, sql, timeout_s, max_rows,
    max_result_bytes, digest)`` requests from stdin, answer ``(request_id, ExecutionResult)`` on
    stdout."""
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
        request_id, query = request[0], request[1:]
        try:
            result = runner.run(*query)
        except MemoryError:
            result = ExecutionResult(False, [], "MemoryError: result too large")
        try:
            _write_message(answers, (request_id, result))
        except MemoryError:
            _write_message(answers, (request_id, ExecutionResult(False, [], "MemoryError: result too large")))


class Sandbox:
    """A worker process that runs one query at a time; killed and replaced on overrun.

    The worker is a fresh interpreter (``python -m vantage_core.evaluate.executor``), so it
    inherits no threads or heap from the caller and needs no ``__main__`` guard there.
    ``grace_s`` is how long past the query's own time limit the parent waits before it kills the
    worker (the in-process progress handler normally stops the query first).
    """

    def __init__(self, max_bytes: int = 100_000_000, heap_bytes: int = 1 << 30,
                 mem_bytes: int = 2 << 30, grace_s: float = 2.0, result_bytes: int = DEFAULT_RESULT_BYTES):
        self.max_bytes, self.heap_bytes, self.mem_bytes, self.grace_s = max_bytes, heap_bytes, mem_bytes, grace_s
        self.result_bytes = result_bytes
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        # one request and its answer at a time: two threads sharing the pipes would read each
        # other's answers (or wait forever for one the other already took)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

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
            _write_message(self.process.stdin, (request_id, db_path, sql, timeout_s, max_rows, max_result_bytes, digest))
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_s + self.grace_s)
            if ready:
                answer_id, result = _read_message(self.process.stdout)
                if answer_id == request_id:
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
    whole result (see :func:`same_result`). Safe to call from any number of threads.
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
    from vantage_core.evaluate.executor import _serve as serve

    serve(*(int(a) for a in sys.argv[1:4]))
