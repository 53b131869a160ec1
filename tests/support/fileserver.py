"""A real HTTP server on 127.0.0.1 that looks like the hub and like a Seafile server, with faults on demand.

It serves:
- hub repositories: ``/api/models/<repo>[/revision/<rev>]`` (what ``HfApi.model_info(files_metadata=True)``
  asks) and ``/<repo>/resolve/<rev>/<file>``, LFS files through a redirect to ``/cdn/<sha256>`` like the hub;
- Seafile folder shares: ``/d/<key>/`` (with a CSRF password form when protected, unlocked per session cookie),
  ``/api/v2.1/share-links/<key>/dirents/?path=``, ``/d/<key>/files/?p=&dl=1`` redirecting to a one-time
  ``/seafhttp/files/<token>/<name>`` URL;
- Seafile single-file links ``/f/<key>/?dl=1``;
- ModelScope models as the ``modelscope`` package's client (1.31.0) reads them: the recursive listing
  ``/api/v1/models/<owner>/<name>/repo/files?Revision=&Recursive=True`` answering ``{"Code": 200, "Data": {"Files":
  [{"Name", "Path", "Type", "Size", "Sha256", "Revision"}]}}`` (folders as ``Type: tree``), and each file from
  ``/api/v1/models/<owner>/<name>/repo?Revision=&FilePath=``. A repo's ``extra_entries`` are appended to its
  listing as they are, and ``listed_sha256`` overrides a file's Sha256 (a hostile or damaged server); an unknown
  revision is an error in the answer's envelope (HTTP 200, ``Code`` not 200), as the package's ``raise_on_error``
  expects.

Every file body honours ``Range``. ``faults`` switch failures on per file (keyed by the file's path in its repo
or share): drop the connection after N bytes once, 404, 429 or 503 a number of times, corrupt bytes once,
announce a Content-Length longer than the body a number of times (``short_body``: the body ends early and the
connection closes), or send a chunked body (no length) that ends early or goes on past the file's size
(``chunked_short``, ``chunked_long``). A share's
``extra_entries`` are listed in its root as they are (a hostile server's dirents); a single file added with
``unknown_size`` is served chunked, without Range or any length. ``served[path]`` counts the body bytes written
for each file.
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit


@dataclass
class Faults:
    """Failures to inject, keyed by file path; counts go down as they fire."""

    drop_after: dict[str, int] = field(default_factory=dict)
    not_found: set[str] = field(default_factory=set)
    too_many_requests: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)
    short_body: dict[str, int] = field(default_factory=dict)
    chunked_short: dict[str, int] = field(default_factory=dict)
    chunked_long: dict[str, int] = field(default_factory=dict)


@dataclass
class HubRepo:
    revision: str
    files: dict[str, bytes]
    lfs: set[str]
    listed_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelScopeRepo:
    revision: str
    files: dict[str, bytes]
    extra_entries: list[dict] = field(default_factory=list)
    listed_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class Share:
    files: dict[str, bytes]
    password: str | None = None
    extra_entries: list[dict] = field(default_factory=list)


class FileServer:
    """The server's state; tests add repositories and shares, switch faults on and read ``served``."""

    def __init__(self) -> None:
        self.hub: dict[str, HubRepo] = {}
        self.shares: dict[str, Share] = {}
        self.modelscope: dict[str, ModelScopeRepo] = {}
        self.single_files: dict[str, tuple[str, bytes]] = {}
        self.unknown_size: set[str] = set()  # single-file keys served without any length
        self.faults = Faults()
        self.served: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sessions: dict[str, set[str]] = {}  # session id -> unlocked share keys
        self.tickets: dict[str, tuple[str, bytes]] = {}  # one-time file server token -> (path, bytes)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_hub_repo(
        self, repo_id: str, revision: str, files: dict[str, bytes], lfs: set[str] | None = None
    ) -> None:
        self.hub[repo_id] = HubRepo(revision, dict(files), set(lfs or ()))

    def add_modelscope_repo(self, repo_id: str, revision: str, files: dict[str, bytes]) -> ModelScopeRepo:
        self.modelscope[repo_id] = ModelScopeRepo(revision, dict(files))
        return self.modelscope[repo_id]

    def add_share(self, key: str, files: dict[str, bytes], password: str | None = None) -> str:
        """A folder share of ``files`` (paths with folders); returns its link."""
        self.shares[key] = Share(dict(files), password)
        return f"{self.url}/d/{key}/"

    def add_single_file(self, key: str, name: str, data: bytes, *, unknown_size: bool = False) -> str:
        self.single_files[key] = (name, data)
        if unknown_size:
            self.unknown_size.add(name)
        return f"{self.url}/f/{key}/?dl=1"

    def fire(self, table: dict[str, int], path: str) -> bool:
        """Use up one firing of a counted fault."""
        with self.lock:
            if table.get(path, 0) > 0:
                table[path] -= 1
                return True
        return False


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

        # -- helpers -------------------------------------------------------------------------------------
        def send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self.send_text(status, json.dumps(payload), "application/json", headers)

        def send_text(
            self,
            status: int,
            text: str,
            content_type: str = "text/html",
            headers: dict[str, str] | None = None,
        ) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def session(self) -> str:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            return cookie["sessionid"].value if "sessionid" in cookie else ""

        def send_file(self, path: str, data: bytes, filename: str | None = None) -> None:
            """Serve ``data`` honouring Range, with the faults switched on for ``path``."""
            if path in server.faults.not_found:
                self.send_text(404, "Not found", headers={"X-Error-Code": "EntryNotFound"})
                return
            if server.fire(server.faults.too_many_requests, path):
                self.send_text(429, "Slow down", headers={"Retry-After": "0"})
                return
            if server.fire(server.faults.unavailable, path):
                self.send_text(503, "Unavailable")
                return
            if server.fire(server.faults.corrupt, path):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            requested = self.headers.get("Range", "")
            if path in server.unknown_size:
                self.send_chunked(path, data)
                return
            probe = requested == "bytes=0-0"  # a listing's probe for the name and size: no length faults
            if not probe and server.fire(server.faults.chunked_short, path):
                self.send_chunked(path, data[: len(data) // 2])
                return
            if not probe and server.fire(server.faults.chunked_long, path):
                self.send_chunked(path, data + b"trailing bytes past the file's size")
                return
            full, start, status = len(data), 0, 200
            if requested.startswith("bytes="):
                first, _, last = requested[len("bytes=") :].partition("-")
                start = int(first)
                if start >= full:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{full}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = min(int(last), full - 1) if last else full - 1
                data, status = data[start : end + 1], 206
            announced = len(data)
            if not probe and server.fire(server.faults.short_body, path):
                data = data[: len(data) // 2]
                self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(announced))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{full}")
            if filename:
                self.send_header("Content-Disposition", f"attachment;filename*=utf-8''{quote(filename)}")
            self.end_headers()
            cut = server.faults.drop_after.pop(path, None)
            for piece in _pieces(data if cut is None else data[:cut]):
                try:
                    self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with server.lock:
                    server.served[path] += len(piece)
            if cut is not None or self.close_connection:
                self.close_connection = True
                self.connection.shutdown(2)

        def send_chunked(self, path: str, data: bytes) -> None:
            """A 200 with no length at all (chunked, Range ignored), like a server streaming a generated file."""
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header(
                "Content-Disposition", f"attachment;filename*=utf-8''{quote(path.rsplit('/', 1)[-1])}"
            )
            self.end_headers()
            for piece in _pieces(data):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                with server.lock:
                    server.served[path] += len(piece)
            self.wfile.write(b"0\r\n\r\n")

        # -- routing -------------------------------------------------------------------------------------
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            segments = [unquote(segment) for segment in parts.path.split("/") if segment]
            server.requests.append(("GET", self.path, dict(self.headers)))
            if segments[:3] == ["api", "v1", "models"] and segments[5:6] == ["repo"]:
                self.modelscope_repo("/".join(segments[3:5]), segments[6:], query)
            elif segments[:2] == ["api", "models"]:
                self.hub_info(segments[2:])
            elif segments[:3] == ["api", "v2.1", "share-links"] and segments[4:5] == ["dirents"]:
                self.dirents(segments[3], query.get("path", "/"))
            elif segments and segments[0] == "cdn":
                self.cdn(segments[1])
            elif segments[:2] == ["seafhttp", "files"]:
                self.ticket(segments[2])
            elif len(segments) >= 2 and segments[0] == "d" and segments[2:3] == ["files"]:
                self.share_file(segments[1], query.get("p", ""))
            elif len(segments) == 2 and segments[0] == "d":
                self.share_page(segments[1])
            elif len(segments) == 2 and segments[0] == "f":
                self.single_file(segments[1])
            elif len(segments) >= 5 and segments[2] == "resolve":
                self.hub_file("/".join(segments[:2]), segments[3], "/".join(segments[4:]))
            else:
                self.send_text(404, "Not found")

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            parts = urlsplit(self.path)
            segments = [segment for segment in parts.path.split("/") if segment]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            server.requests.append(("POST", self.path, dict(self.headers)))
            if len(segments) == 2 and segments[0] == "d" and segments[1] in server.shares:
                self.unlock(segments[1], {key: values[0] for key, values in parse_qs(body).items()})
            else:
                self.send_text(404, "Not found")

        # -- hub -----------------------------------------------------------------------------------------
        def hub_info(self, rest: list[str]) -> None:
            repo_id = "/".join(rest[:2])
            repo = server.hub.get(repo_id)
            if repo is None:
                self.send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            if rest[2:3] == ["revision"] and rest[3] not in (repo.revision, "main"):
                self.send_json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                return
            siblings = []
            for name, data in repo.files.items():
                size = repo.listed_sizes.get(name, len(data))
                sibling: dict[str, object] = {
                    "rfilename": name,
                    "size": size,
                    "blobId": hashlib.sha1(data).hexdigest(),
                }
                if name in repo.lfs:
                    sibling["lfs"] = {
                        "size": size,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "pointerSize": 134,
                    }
                siblings.append(sibling)
            self.send_json(200, {"id": repo_id, "sha": repo.revision, "siblings": siblings})

        def hub_file(self, repo_id: str, revision: str, name: str) -> None:
            repo = server.hub.get(repo_id)
            if repo is None or revision not in (repo.revision, "main") or name not in repo.files:
                self.send_text(404, "Entry not found", headers={"X-Error-Code": "EntryNotFound"})
            elif name in repo.lfs and name not in server.faults.not_found:
                self.redirect(f"/cdn/{quote(repo_id + '/' + name, safe='')}")
            else:
                self.send_file(name, repo.files[name])

        def cdn(self, key: str) -> None:
            repo_id, _, name = unquote(key).rpartition("/")
            if self.headers.get("Authorization"):
                self.send_text(400, "Authorization must not reach the CDN")
                return
            self.send_file(name, server.hub[repo_id].files[name])

        # -- modelscope -----------------------------------------------------------------------------------
        def modelscope_repo(self, repo_id: str, rest: list[str], query: dict[str, str]) -> None:
            repo = server.modelscope.get(repo_id)
            if repo is None:
                self.send_json(404, {"Code": 10010205001, "Message": f"model {repo_id} not found", "Data": None})
            elif query.get("Revision", repo.revision) not in (repo.revision, "master"):  # an error in the envelope
                self.send_json(200, {"Code": 10010205001, "Message": "Revision not found", "Data": None})
            elif rest == ["files"]:
                self.modelscope_listing(repo, recursive=query.get("Recursive") == "True")
            elif not rest and query.get("FilePath") in repo.files:
                self.send_file(query["FilePath"], repo.files[query["FilePath"]])
            else:
                self.send_json(404, {"Code": 10010205001, "Message": "file not found", "Data": None})

        def modelscope_listing(self, repo: ModelScopeRepo, recursive: bool) -> None:
            folders = sorted({path.rsplit("/", 1)[0] for path in repo.files if "/" in path})
            entries: list[dict] = [
                {"Name": folder.rsplit("/", 1)[-1], "Path": folder, "Type": "tree", "Size": 0, "Sha256": ""}
                for folder in folders
            ]
            for path, data in repo.files.items():
                if "/" in path and not recursive:
                    continue
                entries.append(
                    {
                        "Name": path.rsplit("/", 1)[-1],
                        "Path": path,
                        "Type": "blob",
                        "Size": len(data),
                        "Sha256": repo.listed_sha256.get(path, hashlib.sha256(data).hexdigest()),
                        "Revision": hashlib.sha1(f"{repo.revision}:{path}".encode()).hexdigest(),
                    }
                )
            files = entries + repo.extra_entries
            self.send_json(200, {"Code": 200, "Message": "success", "Data": {"Files": files}})

        # -- seafile -------------------------------------------------------------------------------------
        def share_page(self, key: str) -> None:
            share = server.shares.get(key)
            if share is None:
                self.send_text(404, "<h1>Link does not exist.</h1>")
                return
            if share.password is None or key in server.sessions.get(self.session(), set()):
                self.send_text(200, f"<h1>Shared folder {html.escape(key)}</h1>")
                return
            self.password_form(key, error="")

        def password_form(self, key: str, error: str) -> None:
            session = self.session() or secrets.token_hex(8)
            server.sessions.setdefault(session, set())
            csrf = hashlib.sha256(session.encode()).hexdigest()[:32]
            page = (
                f'<form action="" method="post" id="share-passwd-form">'
                f'<input type="hidden" name="csrfmiddlewaretoken" value="{csrf}">'
                f'<input type="hidden" name="token" value="{key}">'
                f'<label>Password</label><input type="password" name="password" autofocus>'
                f'<p class="error">{error}</p><button type="submit">Submit</button></form>'
            )
            self.send_text(200, page, headers={"Set-Cookie": f"sessionid={session}; Path=/; HttpOnly"})

        def unlock(self, key: str, form: dict[str, str]) -> None:
            session = self.session()
            expected_csrf = hashlib.sha256(session.encode()).hexdigest()[:32]
            if not session or form.get("csrfmiddlewaretoken") != expected_csrf:
                self.send_text(403, "<h1>CSRF verification failed.</h1>")
                return
            if form.get("password") != server.shares[key].password:
                self.password_form(key, error="Please enter a correct password.")
                return
            server.sessions[session].add(key)
            self.send_text(200, f"<h1>Shared folder {html.escape(key)}</h1>")

        def share_open(self, key: str) -> Share | None:
            """The share if this session may read it, after answering 404/403 otherwise."""
            share = server.shares.get(key)
            if share is None:
                self.send_json(404, {"error_msg": f"Share link {key} not found."})
                return None
            if share.password is not None and key not in server.sessions.get(self.session(), set()):
                self.send_json(403, {"error_msg": "Permission denied."})
                return None
            return share

        def dirents(self, key: str, folder: str) -> None:
            share = self.share_open(key)
            if share is None:
                return
            prefix = folder.strip("/") + "/" if folder.strip("/") else ""
            folders, entries = set(), []
            for path, data in share.files.items():
                if not path.startswith(prefix):
                    continue
                head, _, rest = path[len(prefix) :].partition("/")
                if rest:
                    folders.add(head)
                else:
                    entries.append(
                        {
                            "is_dir": False,
                            "file_name": head,
                            "file_path": f"/{path}",
                            "size": len(data),
                            "last_modified": "2023-04-01T00:00:00+08:00",
                        }
                    )
            entries += [
                {
                    "is_dir": True,
                    "folder_name": name,
                    "folder_path": f"/{prefix}{name}/",
                    "size": 0,
                    "last_modified": "2023-04-01T00:00:00+08:00",
                }
                for name in sorted(folders)
            ]
            if not prefix:
                entries += share.extra_entries
            self.send_json(200, {"dirent_list": entries})

        def share_file(self, key: str, path: str) -> None:
            share = self.share_open(key)
            if share is None:
                return
            name = path.lstrip("/")
            if name not in share.files or name in server.faults.not_found:
                self.send_text(404, "File not found")
                return
            self.issue_ticket(name, share.files[name])

        def single_file(self, key: str) -> None:
            if key not in server.single_files:
                self.send_text(404, "<h1>Link does not exist.</h1>")
                return
            name, data = server.single_files[key]
            self.issue_ticket(name, data)

        def issue_ticket(self, path: str, data: bytes) -> None:
            ticket = secrets.token_hex(8)
            server.tickets[ticket] = (path, data)
            self.redirect(f"/seafhttp/files/{ticket}/{quote(path.rsplit('/', 1)[-1])}")

        def ticket(self, ticket: str) -> None:
            entry = server.tickets.pop(ticket, None)  # one-time, like Seafile's file server tokens
            if entry is None:
                self.send_text(403, "Bad access token")
                return
            path, data = entry
            self.send_file(path, data, filename=path.rsplit("/", 1)[-1])

    return Handler


def _pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@contextmanager
def running_fileserver() -> Iterator[FileServer]:
    """A started server, stopped on exit (tests wrap it in a fixture)."""
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()
