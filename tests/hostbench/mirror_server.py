"""Local mirrors for test hosts, stdlib only, run as a child process of the test.

`index`: a PEP 503 "simple" package index over the wheels and sdists in a directory; a project it
does not hold is fetched from PyPI's simple API and passed through (the file links there point at
files.pythonhosted.org, which test hosts reach through NAT). A project it holds is served only from
the directory, so a local build always wins over PyPI's.

`files`: a directory tree served as-is (release tarballs, checksum files).

Prints `READY <base url>` once listening; exits when its parent process is gone.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import http.server
import os
import re
import sys
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from urllib.parse import quote

REQUEST_TIMEOUT_S = 30
UPSTREAM_TIMEOUT_S = 30
FALLTHROUGH_CACHE: dict[tuple[str, str], tuple[int, str, bytes]] = {}


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str | None:
    """The normalized project a distribution file belongs to, or None if it is not one."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-", 1)[0])
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            return normalize(filename[: -len(suffix)].rsplit("-", 1)[0])
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # a stalled client never holds a thread for longer

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class IndexHandler(_Handler):
    """`/simple/<project>/` pages and `/files/<name>` downloads."""

    upstream = "https://pypi.org/simple"

    def do_GET(self) -> None:
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            if not self.path.split("?", 1)[0].endswith("/"):
                self.send_response(301)
                self.send_header("Location", f"/simple/{parts[1]}/")
                self.end_headers()
                return
            self._project_page(normalize(parts[1]))
        elif len(parts) == 1 and parts[0] == "simple":
            self._send(200, "text/html", self._root_page().encode())
        elif len(parts) == 2 and parts[0] == "files":
            self.path = "/" + parts[1]
            super().do_GET()
        else:
            self.send_error(404)

    def _local_files(self, project: str) -> list[Path]:
        return sorted(
            p
            for p in Path(self.directory).iterdir()
            if p.is_file() and project_of(p.name) == project
        )

    def _root_page(self) -> str:
        names = (project_of(p.name) for p in Path(self.directory).iterdir())
        links = "".join(
            f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted({n for n in names if n})
        )
        return f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n"

    def _project_page(self, project: str) -> None:
        files = self._local_files(project)
        if not files:
            self._fall_through(project)
            return
        links = "".join(
            f'<a href="/files/{quote(f.name)}#sha256={sha256_of(f)}">{html.escape(f.name)}</a>\n'
            for f in files
        )
        page = f"<!DOCTYPE html>\n<html><body>\n<h1>{project}</h1>\n{links}</body></html>\n"
        self._send(200, "text/html", page.encode())

    def _fall_through(self, project: str) -> None:
        accept = self.headers.get("Accept", "text/html")
        key = (project, accept)
        if key not in FALLTHROUGH_CACHE:
            request = urllib.request.Request(
                f"{self.upstream}/{project}/", headers={"Accept": accept, "User-Agent": "sk-index"}
            )
            try:
                with urllib.request.urlopen(request, timeout=UPSTREAM_TIMEOUT_S) as response:
                    FALLTHROUGH_CACHE[key] = (
                        response.status,
                        response.headers.get("Content-Type", "text/html"),
                        response.read(),
                    )
            except urllib.error.HTTPError as error:
                self.send_error(error.code, f"upstream: {error.reason}")
                return
            except OSError as error:
                self.send_error(502, f"upstream unreachable: {error}")
                return
        status, content_type, body = FALLTHROUGH_CACHE[key]
        self._send(status, content_type, body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    """Stops serving once the process that started it is gone."""

    daemon_threads = True

    def __init__(self, *args: object, parent: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.parent = parent

    def service_actions(self) -> None:
        if os.getppid() != self.parent:
            raise SystemExit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("index", "files"))
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default=IndexHandler.upstream)
    args = parser.parse_args()
    IndexHandler.upstream = args.upstream.rstrip("/")
    handler = IndexHandler if args.kind == "index" else _Handler
    server = Server(
        (args.bind, args.port), partial(handler, directory=str(args.dir)), parent=os.getppid()
    )
    print(f"READY http://{args.bind}:{server.server_port}", flush=True)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
