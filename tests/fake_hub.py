"""A stand-in for the Hugging Face hub on 127.0.0.1: the routes ``huggingface_hub`` uses to
download a dataset repository (its revision, its file tree, then each file), served from
files in memory. Real HTTP, so the client's own endpoint, proxy and offline settings are what
is tested."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub({"user/repo": {"path/in/repo": b"bytes"}}) as hub: hub.endpoint``; ``hub.requests``
    lists the paths asked for."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

            def _answer(self, head: bool):
                hub.requests.append(self.path)
                # through a proxy the request line holds the whole URL: the route is its path
                path = re.sub(r"^https?://[^/]+", "", self.path.split("?")[0])
                status, headers, body = hub.route(path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, path: str) -> tuple[int, dict, bytes]:
        m = re.fullmatch(r"/api/datasets/(.+?)/revision/([^/]+)", path)
        if m:
            files = self.repos.get(m.group(1))
            if files is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'
            info = {"id": m.group(1), "sha": COMMIT, "siblings": [{"rfilename": f} for f in sorted(files)],
                    "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": []}
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        m = re.fullmatch(r"/api/datasets/(.+?)/tree/([^/]+)(?:/.*)?", path)
        if m and m.group(1) in self.repos:
            entries = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for f, b in sorted(self.repos[m.group(1)].items())]
            return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()
        m = re.fullmatch(r"/datasets/(.+?)/resolve/([^/]+)/(.+)", path)
        if m and m.group(3) in self.repos.get(m.group(1), {}):
            body = self.repos[m.group(1)][m.group(3)]
            etag = hashlib.sha256(body).hexdigest()
            return 200, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Content-Type": "application/octet-stream"}, body
        return 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "not found"}'

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
