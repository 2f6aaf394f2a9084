"""Adapting a served model to one of its databases from the playground (``vantage serve
--adapt-dir DIR``): the :class:`~vantage_core.inference.adapt_routes.Learner` of the server.

Under ``DIR``:

- ``<db_id>.examples.jsonl``: the pairs saved for a database, one JSON object per line as
  ``vantage adapt --examples`` reads them. A pair is checked as ``vantage adapt`` checks its
  file (:func:`~vantage_core.train.adapt.pair_problems`, on the file with the pair appended,
  written beside it) and the checked file then replaces the old one: a pair that cannot be
  learned writes nothing, and concurrent saves never interleave.
- ``<db_id>/``: the run adapted to that database (``vantage adapt -o``; each adaptation starts
  from the served model and replaces the earlier run once complete); ``<db_id>.adapt.log`` its
  output.

The training runs in a child process (``python -m vantage_core.train.adapt_jobs``, at a lower
priority), so the server's own model keeps answering; it reports each step on a pipe of JSON
lines. One job at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.folders import refuse_overlap
from vantage_core.inference.adapt_routes import AdaptBusy, ServedDatabase
from vantage_core.train.adapt import (BLEND, REPLAY_SHARE, STEPS, SYNTHETIC, AdaptRequest, PairChecker, adapt, check_database,
                                      pair_problems)

EXAMPLES_SUFFIX = ".examples.jsonl"
STAGING = ".staging"  # where a file of pairs is checked before it replaces the examples file
NICENESS = 10  # the training process's priority below the server's


@dataclass
class AdaptSettings:
    """How the server adapts (``vantage serve --adapt-dir``, ``--adapt-steps``, ``--adapt-blend``)."""

    folder: str  # the examples files and the adapted runs
    steps: int = STEPS
    synthetic: int = SYNTHETIC
    replay: float = REPLAY_SHARE
    blend: float = BLEND


class AdaptJobs:
    """Saves each served database's examples under ``settings.folder`` and adapts the model in
    ``model`` (a float run, checkpoint or export folder) to a database, one job at a time."""

    def __init__(self, model: str, settings: AdaptSettings):
        from vantage_core.model.io import read_model_folder

        folder, self.config, self.vocab, _, quantization = read_model_folder(model)
        if quantization:
            raise ConfigError(f"--adapt-dir: the served model holds {quantization.get('bits')}-bit weights; serve the "
                              f"float run or checkpoint it was exported from to adapt it")
        for source in (model, folder):  # the folder as given first: what the error names
            refuse_overlap(source, settings.folder, "--adapt-dir")
        self.model, self.settings, self.folder = str(folder), settings, Path(settings.folder).resolve()
        (self.folder / STAGING).mkdir(parents=True, exist_ok=True)
        self._checker: PairChecker | None = None
        self._saving = threading.Lock()  # one save at a time: read, append, check, replace
        self._jobs = threading.Lock()  # guards _status and _process
        self._status: dict = {"state": "idle", "db_id": None, "step": 0, "total": 0, "message": "", "error": None}
        self._process: subprocess.Popen | None = None

    def examples_file(self, db_id: str) -> Path:
        return self.folder / f"{db_id}{EXAMPLES_SUFFIX}"

    # ------------------------------------------------------------------------ examples

    def save_example(self, db: ServedDatabase, question: str, sql: str) -> dict:
        """Append the pair to ``db``'s examples once the file with it passes ``vantage adapt``'s
        checks; a :class:`DataError` listing each pair that cannot be learned, otherwise."""
        from vantage_core.plugins import registry

        db_file, notes = self._sqlite_database(db)
        line = json.dumps({"question": question, "sql": sql}, ensure_ascii=False) + "\n"
        with self._saving:
            self._refuse_while_adapting(db.db_id, "save pairs for it")  # its job reads the file
            final = self.examples_file(db.db_id)
            staged = self.folder / STAGING / final.name  # the same name: errors name the file as the user sees it
            before = final.read_text(encoding="utf-8") if final.is_file() else ""
            staged.write_text(before + ("\n" if before and not before.endswith("\n") else "") + line, encoding="utf-8")
            try:
                examples, problems = pair_problems(str(staged), db_file, notes, self._pair_checker(), registry())
                if problems:
                    raise DataError("; ".join(problems) + f". The pair was not saved to {final.name}.")
                os.replace(staged, final)
            finally:
                staged.unlink(missing_ok=True)
        return {"file": final.name, "examples": len(examples)}

    def _pair_checker(self) -> PairChecker:
        from vantage_core.plugins import registry

        if self._checker is None:
            self._checker = PairChecker(self.config, self.vocab, registry())
        return self._checker

    def _sqlite_database(self, db: ServedDatabase) -> tuple[str, str | None]:
        """``db``'s SQLite file and notes file; a database served from a URL cannot be adapted to."""
        from vantage_core.sql.database import is_url

        if is_url(db.path):
            raise DataError(f"db_id {db.db_id!r} is served from a URL; adapting needs a database served as a SQLite file")
        return check_database(AdaptRequest(model=self.model, db=db.path, out="", notes=db.notes))

    # ------------------------------------------------------------------------ the job

    def start(self, db: ServedDatabase, adapted: Callable[[str], None]) -> dict:
        """Start adapting the model to ``db`` from its examples (synthetic pairs only where none
        were saved) in a child process; ``adapted(folder)`` once it has succeeded."""
        self._sqlite_database(db)
        examples = self.examples_file(db.db_id)
        request = AdaptRequest(model=self.model, db=db.path, out=str(self.folder / db.db_id),
                               examples=str(examples) if examples.is_file() else None, notes=db.notes,
                               synthetic=self.settings.synthetic, replay=self.settings.replay,
                               steps=self.settings.steps, blend=self.settings.blend, overwrite=True, progress=False)
        log = self.folder / f"{db.db_id}.adapt.log"
        with self._saving, self._jobs:  # a save under way ends first; later ones see the job
            self._refuse_while_adapting(None, "start another", locked=True)
            process = self._spawn(request, log)
            self._process = process
            self._status = {"state": "running", "db_id": db.db_id, "step": 0, "total": request.steps,
                            "message": "checking the pairs and preparing the data", "error": None}
            status = dict(self._status)
        threading.Thread(target=self._follow, args=(process, db.db_id, log, adapted), daemon=True,
                         name="vantage-adapt").start()
        return status

    @staticmethod
    def _spawn(request: AdaptRequest, log: Path) -> subprocess.Popen:
        """The child process adapting as ``request`` asks, its output in ``log``."""
        try:
            with open(log, "w") as output:  # the child keeps its own copy
                process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=output, text=True)
            process.stdin.write(json.dumps(dataclasses.asdict(request)))
            process.stdin.close()
        except OSError as exc:
            raise VantageError(f"cannot start the adaptation: {exc.strerror or exc}") from None
        return process

    def status(self) -> dict:
        with self._jobs:
            return dict(self._status)

    def close(self) -> None:
        """Stop a running job (the server is stopping)."""
        with self._jobs:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def _refuse_while_adapting(self, db_id: str | None, what: str, locked: bool = False) -> None:
        """:class:`AdaptBusy` while a job runs (for ``db_id``'s database only, where given)."""
        status = self._status if locked else self.status()
        if status["state"] == "running" and db_id in (None, status["db_id"]):
            raise AdaptBusy(f"the model is being adapted to {status['db_id']} (step {status['step']} of "
                            f"{status['total']}); one adaptation at a time: {what} once it ends (GET /v1/adapt)")

    def _follow(self, process: subprocess.Popen, db_id: str, log: Path, adapted: Callable[[str], None]) -> None:
        """Read the child's reports until it ends, then take the adapted model (or the error)."""
        outcome: dict = {}
        try:
            for line in process.stdout:
                report = json.loads(line)
                if "step" in report:
                    self._update(step=report["step"], total=report["total"], message="training")
                outcome.update({k: v for k, v in report.items() if k in ("done", "error")})
            code = process.wait()
            if "done" not in outcome:
                raise VantageError(outcome.get("error") or f"the adaptation process stopped (exit code {code}); "
                                                           f"its output is in {log}")
            self._update(message="loading the adapted model")
            adapted(outcome["done"])
            self._update(state="succeeded", message=f"the adapted model answers the questions on {db_id}")
        except Exception as exc:  # noqa: BLE001 - any failure is the job's, reported by its route
            self._update(state="failed", message="the model was left as it was", error=str(exc))

    def _update(self, **changes: Any) -> None:
        with self._jobs:
            self._status.update(changes)


# ---------------------------------------------------------------------------- the child process

def main() -> int:
    """Adapt as the JSON :class:`AdaptRequest` on stdin asks, reporting ``{"step", "total"}``
    after each step, then ``{"done": folder}`` or ``{"error": why}``, one JSON line each on
    stdout; everything else the run prints goes to stderr."""
    request = AdaptRequest(**json.loads(sys.stdin.read()))
    reports = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the run prints goes to the log, not into the reports
    os.nice(NICENESS)

    def report(**fields: Any) -> None:
        reports.write(json.dumps(fields) + "\n")

    try:
        adapt(request, echo=lambda message: print(message, file=sys.stderr, flush=True),
              on_step=lambda step, total: report(step=step, total=total))
    except VantageError as exc:
        report(error=str(exc))
        return 1
    report(done=request.out)
    return 0



if __name__ == "__main__":
    sys.exit(main())
