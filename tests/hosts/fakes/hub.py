"""A tiny stand-in for the Hugging Face Hub's download API (tests only), enough for
`huggingface_hub.snapshot_download` through `HF_ENDPOINT`: repository info at a revision, the file
tree of a commit, and `resolve` URLs for each file (HEAD and GET, with the Hub's headers).

Repositories live in memory: `Hub.add(repo, revision, files)` returns the commit hash. Requests
without `Authorization: Bearer <token>` get 401 when the hub has a token (a gated model).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Hub:
    def __init__(self, bind: str, token: str | None = None) -> None:
        self.repos: dict[
            str, dict[str, Any]
        ] = {}  # repo -> {"refs": {rev: sha}, "commits": {sha: files}}
        self.token = token
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, body=False)

            def do_GET(self) -> None:
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer((bind, 0), Handler)
        self.url = f"http://{bind}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo: str, revision: str, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        entry = self.repos.setdefault(repo, {"refs": {}, "commits": {}})
        entry["refs"][revision] = digest
        entry["commits"][digest] = files
        return digest

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _commit(self, repo: str, revision: str) -> str | None:
        entry = self.repos.get(repo)
        if entry is None:
            return None
        if revision in entry["commits"]:
            return revision
        sha: str | None = entry["refs"].get(revision)
        return sha

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = request.path.split("?", 1)[0]
        self.requests.append(f"{request.command} {path}")
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(request, 401, b'{"error": "Access to model is restricted"}', body)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if match:
            repo, revision = match.groups()
            sha = self._commit(repo, revision)
            if sha is None:
                return self.reply(request, 404, b'{"error": "Revision Not Found"}', body)
            files = self.repos[repo]["commits"][sha]
            info = {"id": repo, "modelId": repo, "sha": sha, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(files)]}  # fmt: skip
            return self.reply(request, 200, json.dumps(info).encode(), body)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if match:
            repo, revision, _sub = match.groups()
            sha = self._commit(repo, revision)
            if sha is None:
                return self.reply(request, 404, b'{"error": "Revision Not Found"}', body)
            files = self.repos[repo]["commits"][sha]
            tree = [
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                }
                for name, data in sorted(files.items())
            ]
            return self.reply(request, 200, json.dumps(tree).encode(), body)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            repo, revision, name = match.groups()
            sha = self._commit(repo, revision)
            files = self.repos[repo]["commits"].get(sha or "", {}) if repo in self.repos else {}
            if name not in files:
                return self.reply(request, 404, b"Entry not found", body)
            data = files[name]
            headers = {"X-Repo-Commit": str(sha), "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self.reply(request, 200, data, body, headers, "application/octet-stream")
        return self.reply(request, 404, b'{"error": "not found"}', body)

    @staticmethod
    def reply(
        request: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        body: bool,
        headers: dict[str, str] | None = None,
        kind: str = "application/json",
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if body:
            request.wfile.write(data)
