"""A minimal Hugging Face hub HTTP server on 127.0.0.1 for tests (no network): the HTTP boundary, not a mock of
``huggingface_hub``. It implements only what ``create_repo``, ``upload_folder`` (regular, non-LFS uploads) and
``hf_hub_download`` send, as learned from huggingface_hub's client code: repo creation, pre-upload, the NDJSON
commit and ``resolve`` downloads with the ``X-Repo-Commit`` / ``ETag`` headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def validate_card(text: str) -> list[str]:
    """Problems of a model card's YAML metadata block (the fields lpips-sat promises), as the hub would list them."""
    import yaml

    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return ["no YAML metadata block between --- lines at the top"]
    meta = yaml.safe_load(text[4:text.index("\n---\n", 4)])
    problems = [f"{key} missing or not a string" for key in ("license", "library_name") if not isinstance(meta.get(key), str)]
    problems += [f"{key} must be a list of strings" for key in ("tags", "datasets")
                 if not (isinstance(meta.get(key), list) and all(isinstance(v, str) for v in meta[key]))]
    return problems


class FakeHub:
    """Holds repos as ``{repo_id: {path: bytes}}`` plus the current commit id of each, and a request log."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "application/json") -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj: object, code: int = 200, headers: dict[str, str] | None = None) -> None:
                self._send(code, json.dumps(obj).encode(), headers)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                hub.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                    hub.repos.setdefault(repo_id, {})
                    return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if self.path == "/api/validate-yaml":  # the hub checks a README's metadata block before the commit
                    errors = validate_card(json.loads(body)["content"])
                    return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)(\?.*)?", self.path)
                if not m or m.group(1) not in hub.repos:
                    return self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
                repo_id, action = m.group(1), m.group(2)
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                for line in body.decode().splitlines():  # NDJSON: a header line, then one line per file
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        assert value.get("encoding") == "base64", value.get("encoding")
                        hub.repos[repo_id][value["path"]] = base64.b64decode(value["content"])
                digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in hub.repos[repo_id].items())).encode()).hexdigest()
                hub.commits[repo_id] = digest
                return self._json({"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{digest}", "commitOid": digest})

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append((self.command, self.path))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
                files = hub.repos.get(m.group(1)) if m else None
                if files is None:
                    return self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
                data = files.get(m.group(3))
                if data is None:
                    return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": hub.commits[m.group(1)]}
                return self._send(200, data, headers, ctype="application/octet-stream")

        return Handler
