"""Fetching a release from the Hugging Face hub (``vantage data download``).

Offline, this fails at once (no waiting on time-outs) and says how to point the adapter at
local files instead.
"""

from __future__ import annotations

import os
import socket

from vantage_core.errors import DataError

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub does not answer quickly."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    import threading

    answer = []

    def probe() -> None:  # in a thread: a DNS lookup ignores socket time-outs and may hang
        try:
            with socket.create_connection(HUB_HOST, timeout=timeout_s):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(answer and answer[0])


def load_from_hub(repo_id: str, dataset: str, local_hint: str, **kwargs):
    """``datasets.load_dataset(repo_id)`` or a :class:`DataError` that says what to do offline."""
    if not hub_reachable():
        raise DataError(
            f"cannot download {dataset} from the Hugging Face hub ({repo_id}): no network (or HF_HUB_OFFLINE "
            f"is set). Put the official release in a local folder instead and point the adapter at it: "
            f"{local_hint}")
    import datasets

    try:
        return datasets.load_dataset(repo_id, **kwargs)
    except Exception as exc:  # the hub's errors are many; each is reported with the repo named
        raise DataError(f"downloading {repo_id} failed: {type(exc).__name__}: {exc}") from exc
