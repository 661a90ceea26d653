"""Remote COGs through GDAL's virtual file systems: list files (and URLs), a real HTTP server on 127.0.0.1 that
answers range requests (Python's http.server does not), and scores equal to the local files' scores."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gapeval.folders import list_images
from gapeval.score import score
from lpips_sat.errors import InputError
from lpips_sat.raster import gdal_path, is_virtual, path_text

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCENES = ("fields", "town", "marsh_channels")

#: A range-capable static file server: run as ``python server.py ROOT LOG``; prints its port, logs each request.
SERVER = r'''
import http.server, os, re, sys

ROOT, LOG = sys.argv[1], sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        self.serve(body=True)

    def serve(self, body):
        rng = self.headers.get("Range")
        with open(LOG, "a") as log:
            log.write(f"{self.command} {self.path} {rng or '-'}\n")
        path = os.path.join(ROOT, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            data = f.read()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            part = data[first:last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            part = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if body:
            self.wfile.write(part)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


@pytest.fixture
def cog_server(tmp_path):
    """COG copies of example scenes (HR, LR, one prediction set) served over HTTP on 127.0.0.1 from another process
    (GDAL holds the GIL while it waits for some requests, so an in-process server would deadlock)."""
    from rasterio.shutil import copy as rio_copy

    root = tmp_path / "www"
    for sub in ("hr", "lr", "pred/bicubic"):
        (root / sub).mkdir(parents=True)
        for name in SCENES:
            rio_copy(EXAMPLES / sub / f"{name}.tif", root / sub / f"{name}.tif", driver="COG", BLOCKSIZE=32)
    (tmp_path / "server.py").write_text(SERVER)
    log = tmp_path / "requests.log"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "server.py"), str(root), str(log)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield root, f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def metric_rows(path: Path) -> list[dict[str, str]]:
    skip = ("seconds", "pred_path", "target_path", "lr_path", "pred_sha256", "target_sha256", "lr_sha256")
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in skip} for r in csv.DictReader(fh)]


def test_remote_cogs_score_like_local_files(cog_server, tmp_path) -> None:
    root, url, log = cog_server
    lists = {}
    for sub in ("hr", "lr", "pred/bicubic"):
        lists[sub] = tmp_path / f"{sub.replace('/', '_')}.txt"
        lists[sub].write_text("# served by the test's range server\n" + "".join(f"{url}/{sub}/{n}.tif\n" for n in SCENES))
    kw = dict(metric="random-tiny", device="cpu", tile=32)  # 32 px windows: every file is read in several windows
    remote = score({"bicubic": lists["pred/bicubic"]}, lists["hr"], lr=lists["lr"], out=tmp_path / "remote", **kw)
    local = score({"bicubic": root / "pred" / "bicubic"}, root / "hr", lr=root / "lr", out=tmp_path / "local", **kw)
    assert [r["status"] for r in remote.records] == ["ok"] * len(SCENES)
    assert metric_rows(tmp_path / "remote" / "pairs.csv") == metric_rows(tmp_path / "local" / "pairs.csv")
    assert remote.summary["pred_sets"] == local.summary["pred_sets"]
    assert all(r["pred_path"].startswith("/vsicurl/") and r["pred_sha256"] == "" for r in remote.records)
    requests = log.read_text().splitlines()
    gets = [r for r in requests if r.startswith("GET")]
    assert gets and all(not r.endswith(" -") for r in gets), requests  # every GET asked for a byte range
    assert not any(".aux.xml" in r or r.split()[1].endswith("/") for r in requests)  # no side-car probes, no listings


def test_missing_remote_file_is_a_clear_error(cog_server, tmp_path, capsys) -> None:
    from gapeval import cli

    root, url, _ = cog_server
    (tmp_path / "hr.txt").write_text(f"{url}/hr/fields.tif\n")
    (tmp_path / "pred.txt").write_text(f"{url}/pred/bicubic/nowhere/fields.tif\n")
    argv = ["score", "--pred", f"a={tmp_path / 'pred.txt'}", "--target", str(tmp_path / "hr.txt"), "--out", str(tmp_path / "o"),
            "--weights", "random-tiny", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: /vsicurl/" in err and "nowhere/fields.tif" in err and "Traceback" not in err


def test_list_files_keys_and_schemes(tmp_path, capsys) -> None:
    assert gdal_path("https://h/a.tif") == "/vsicurl/https://h/a.tif" and gdal_path("s3://bucket/x/a.tif") == "/vsis3/bucket/x/a.tif"
    assert gdal_path("gs://b/a.tif") == "/vsigs/b/a.tif" and gdal_path("/data/a.tif") == "/data/a.tif"
    assert is_virtual("/vsis3/b/a.tif") and not is_virtual("/data/a.tif")
    (tmp_path / "local").mkdir()
    shutil.copy(EXAMPLES / "hr" / "town.tif", tmp_path / "local" / "town.tif")
    listing = tmp_path / "files.txt"
    listing.write_text("s3://bucket/2023/a.tif\n\n# comment\ns3://bucket/2024/b.TIF\n")
    assert list_images(listing) == {"2023/a": Path("/vsis3/bucket/2023/a.tif"), "2024/b": Path("/vsis3/bucket/2024/b.TIF")}
    listing.write_text("local/town.tif\n")  # relative to the list's folder
    assert list_images(listing) == {"town": tmp_path / "local" / "town.tif"}
    listing.write_text("s3://b/x/a.tif\ns3://b/y/a.tif\n")
    assert list(list_images(listing)) == ["x/a", "y/a"]
    listing.write_text("s3://b/a.tif\ns3://b/a.tiff\n")
    with pytest.raises(InputError, match="same key"):
        list_images(listing)
    listing.write_text("s3://b/a.jp2\n")
    with pytest.raises(InputError, match="not an image"):
        list_images(listing)
    with pytest.raises(InputError, match="not listed"):
        list_images("/vsis3/bucket/folder")


def test_remote_paths_are_written_and_read_back_unchanged(cog_server, tmp_path) -> None:
    """``/vsicurl/http://host/...`` keeps both slashes in pairs.csv and summary.json, and what is read back from pairs.csv
    (merge, gap, report) names the same URL."""
    from gapeval.gap import Run, _resolve_path

    _, url, _ = cog_server
    name = SCENES[0]
    lists = {}
    for sub in ("hr", "lr", "pred/bicubic"):
        lists[sub] = tmp_path / f"{sub.replace('/', '_')}.txt"
        lists[sub].write_text(f"{url}/{sub}/{name}.tif\n")
    out = tmp_path / "remote"
    score({"bicubic": lists["pred/bicubic"]}, lists["hr"], lr=lists["lr"], out=out, metric="random-tiny", device="cpu")
    with open(out / "pairs.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    expected = {col: f"/vsicurl/{url}/{sub}/{name}.tif" for col, sub in
                (("pred_path", "pred/bicubic"), ("target_path", "hr"), ("lr_path", "lr"))}
    assert {col: row[col] for col in expected} == expected
    assert "https:/1" not in (out / "summary.json").read_text() and "http:/1" not in (out / "summary.json").read_text()
    run = Run("remote", out, "key", [], {}, {})
    back = _resolve_path(row["pred_path"], run)
    assert is_virtual(back) and path_text(back) == expected["pred_path"]
    assert path_text(_resolve_path(f"{url}/hr/{name}.tif", run)) == expected["target_path"]  # a bare URL is remote too
    again = score({"bicubic": lists["pred/bicubic"]}, lists["hr"], lr=lists["lr"], out=out, metric="random-tiny", device="cpu",
                  resume=True)
    assert [r["pred_path"] for r in again.records] == [expected["pred_path"]]
