"""Fetching a release from the Hugging Face hub (``vantage data download``) through
``huggingface_hub`` and its own settings:

- ``HF_ENDPOINT``: the hub (or a mirror) to ask, read when the download starts;
- ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``: honoured by the hub client's HTTP stack;
- ``HF_HUB_OFFLINE=1``: no network at all; files already in the hub cache (``HF_HOME``,
  ``HF_HUB_CACHE``) are used, anything else fails at once saying how to use local files.

The files land in the hub cache; each adapter's ``download`` then writes them into the layout
its ``load`` reads (see :func:`read_parquet_rows`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vantage_core.api import DataError

TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``HF_DATASETS_OFFLINE``) as set now; huggingface_hub reads
    its own constant once at import, which a long-lived process may have done before the change."""
    return any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> str:
    """The hub to ask: ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def fetch_repo(repo_id: str, dataset: str, local_hint: str, patterns: list[str], *,
               revision: str | None = None, local_dir: str | Path | None = None) -> Path:
    """The files of dataset repository ``repo_id`` matching ``patterns`` (a folder holding them),
    or a :class:`DataError` naming the repository, the endpoint and what to do instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    where = endpoint()
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                   endpoint=where, local_files_only=offline(),
                                   local_dir=str(local_dir) if local_dir else None)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        why = "no network: HF_HUB_OFFLINE is set and the hub cache does not hold it" if offline() else \
            f"{where} cannot be reached ({_first_line(exc)})"
        raise DataError(f"cannot download {dataset} ({repo_id}): {why}. Put the official release in a local "
                        f"folder instead and point the adapter at it: {local_hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise DataError(f"downloading {dataset} ({repo_id}) from {where} failed: {_first_line(exc)}; "
                        f"or use local files: {local_hint}") from None
    found = [p for p in Path(folder).rglob("*") if p.is_file() and ".cache" not in p.parts]
    if not found:
        raise DataError(f"{dataset} ({repo_id}) at {where}: no file matches {', '.join(patterns)}; "
                        f"use local files instead: {local_hint}")
    return Path(folder)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def read_parquet_rows(folder: Path, split_names: dict[str, tuple[str, ...]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of the parquet files under ``folder``, by split: a file belongs to split ``s`` when
    its name, or the name of a folder it is in, starts with one of ``split_names[s]`` (the hub's
    ``train-00000-of-00001.parquet``, ``train.parquet`` and the parquet conversion's
    ``default/train/0000.parquet`` alike)."""
    import pyarrow.parquet as pq

    rows: dict[str, list[dict[str, Any]]] = {}
    for file in sorted(folder.rglob("*.parquet")):
        parts = file.relative_to(folder).parts[::-1]  # the file's own name first
        for split, prefixes in split_names.items():
            if any(part.startswith(prefixes) for part in parts):
                rows.setdefault(split, []).extend(pq.read_table(file).to_pylist())
                break
    return rows


def write_json(path: Path, rows: Any) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
