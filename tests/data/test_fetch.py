"""ctrlab.data.datasets.fetch against a local http.server on 127.0.0.1 (never any other address)."""
from __future__ import annotations

import gzip
import hashlib
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


from ctrlab.data.datasets.fetch import ChecksumError, DownloadError, download, extract, verify_file  # noqa: E402

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the chunk size


class _Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support; records every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.cut_after: dict[str, int] = {}  # path -> send only this many body bytes, then drop
        self.ignore_range = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                rec = {"path": self.path, "range": rng}
                outer.requests.append(rec)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_response(404, "Not Found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(body):
                        self.send_response(416, "Range Not Satisfiable")
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206, "Partial Content")
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200, "OK")
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                cut = outer.cut_after.pop(self.path, None)
                if cut is not None:
                    rec["sent"] = cut
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                rec["sent"] = len(chunk)  # recorded before writing: the client may finish first
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        assert host == "127.0.0.1"
        return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment must not intercept 127.0.0.1
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_download_success_verifies_sha256_and_md5(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "data.bin"
    out = download(
        server.url("/data.bin"),
        dest,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        progress=False,
        chunk_size=64 * 1024,
    )
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    # a second call finds the verified file and does not hit the server
    n = len(server.requests)
    download(server.url("/data.bin"), dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert len(server.requests) == n


def test_checksum_mismatch_names_file_expected_and_actual(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(server.url("/data.bin"), dest, sha256=wrong, progress=False)
    msg = str(info.value)
    assert str(dest) in msg and wrong in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert info.value.expected == wrong and info.value.actual == hashlib.sha256(PAYLOAD).hexdigest()
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()
    # md5 too
    with pytest.raises(ChecksumError, match="md5"):
        download(server.url("/data.bin"), dest, md5="f" * 32, progress=False)


def test_resumes_partial_download_with_range(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    half = len(PAYLOAD) // 2 + 17
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:half])
    download(server.url("/big.bin"), dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert server.requests[-1]["sent"] == len(PAYLOAD) - half  # only the rest came over the wire


def test_interrupted_download_keeps_part_and_next_call_resumes(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.cut_after["/big.bin"] = 300_000
    dest = tmp_path / "big.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(DownloadError, match="resume"):
        download(server.url("/big.bin"), dest, sha256=sha, progress=False, chunk_size=4096)
    part = tmp_path / "big.bin.part"
    assert part.exists() and 0 < part.stat().st_size <= 300_000 and not dest.exists()
    got = part.stat().st_size
    download(server.url("/big.bin"), dest, sha256=sha, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == f"bytes={got}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "big.bin.part").write_bytes(b"garbage that must not be kept")
    download(server.url("/big.bin"), tmp_path / "big.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_complete_part_file_416_is_accepted(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD)
    download(server.url("/big.bin"), tmp_path / "big.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_404_error_message(server, tmp_path):
    url = server.url("/missing.zip")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "missing.zip", progress=False)
    msg = str(info.value)
    assert "404" in msg and url in msg and "not at that address" in msg
    assert info.value.status == 404 and info.value.url == url
    assert not (tmp_path / "missing.zip").exists()


def test_unreachable_host_message(tmp_path):
    # a closed port on loopback: connection refused, no traffic leaves the machine
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DownloadError, match="could not reach"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, timeout=5)


def test_extract_zip_and_gz(tmp_path):
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("Frappe_x1/train.csv", "label,user\r\n1,2\r\n")
        zf.writestr("readme.txt", "hi")
    out = extract(zpath, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in out) == ["Frappe_x1/train.csv", "readme.txt"]
    assert (tmp_path / "out" / "Frappe_x1" / "train.csv").read_bytes() == b"label,user\r\n1,2\r\n"

    gz = tmp_path / "x.txt.gz"
    gz.write_bytes(gzip.compress(b"hello\n"))
    (target,) = extract(gz)
    assert target == tmp_path / "x.txt" and target.read_bytes() == b"hello\n"


def test_extract_refuses_path_traversal(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="refusing"):
        extract(zpath, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_verify_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    verify_file(p, sha256=hashlib.sha256(b"abc").hexdigest(), md5=hashlib.md5(b"abc").hexdigest())
    with pytest.raises(ChecksumError, match=str(p).replace("\\", "\\\\")):
        verify_file(p, md5="0" * 32)


# ---- the registry's download path, end to end, against the local server ---------------------


def test_get_dataset_download_true_fetches_verifies_and_prepares(server, tmp_path, monkeypatch, data_dir):
    shared = data_dir
    import dataclasses

    from ctrlab.data.datasets import DatasetNotFoundError, get_dataset, kaggle_heads

    # serve the (decompressed) published files from 127.0.0.1 in place of the GitHub URLs
    specs = []
    for spec in kaggle_heads.CRITEO_SOURCES:
        name = Path(spec.path).name
        server.files[f"/criteo/{name}"] = gzip.decompress((shared / (spec.path + ".gz")).read_bytes())
        specs.append(dataclasses.replace(spec, url=server.url(f"/criteo/{name}")))
    monkeypatch.setattr(kaggle_heads, "CRITEO_SOURCES", specs)
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"

    with pytest.raises(DatasetNotFoundError, match="download=True"):
        get_dataset("criteo_head10k", data_dir=data_dir)
    assert not server.requests

    cfg = get_dataset("criteo_head10k", data_dir=data_dir, download=True)
    assert sorted(r["path"] for r in server.requests) == ["/criteo/test.txt", "/criteo/train.txt"]
    assert (data_dir / "criteo_kaggle_head10k" / "train.txt").stat().st_size == 1_938_518
    assert sum(1 for _ in open(cfg.files["train"], "rb")) == 7_200

    # a corrupted server copy is caught before anything is prepared
    body = server.files["/criteo/test.txt"]
    server.files["/criteo/test.txt"] = bytes([body[0] ^ 1]) + body[1:]  # "1" <-> "0": one label flipped
    with pytest.raises(ChecksumError, match="75d8552c"):
        get_dataset("criteo_head10k", data_dir=tmp_path / "data2", download=True)


def test_bars_zip_download_falls_back_to_mirror_extracts_and_verifies(server, tmp_path, monkeypatch):
    """The BARS x1 download path: first URL 404s, the mirror serves a zip with a nested folder."""
    import io

    from ctrlab.data.datasets import bars, get_dataset

    header = "label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\r\n"
    csvs = {s: (header + "".join(f"{i % 2},{i},{i + 1},1,2,3,4,5,6,7,8\r\n" for i in range(n))).encode()
            for s, n in (("train", 7), ("valid", 2), ("test", 1))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for s, body in csvs.items():
            zf.writestr(f"Frappe_x1/{s}.csv", body)
    server.files["/mirror/Frappe_x1.zip"] = buf.getvalue()
    facts = dict(bars.BARS_X1["frappe_x1"])
    facts["urls"] = [server.url("/gone/Frappe_x1.zip"), server.url("/mirror/Frappe_x1.zip")]
    # LF md5 of the fake files: the check must accept the CRLF files through line-ending tolerance
    facts["md5"] = {s: hashlib.md5(b.replace(b"\r\n", b"\n")).hexdigest() for s, b in csvs.items()}
    monkeypatch.setitem(bars.BARS_X1, "frappe_x1", facts)
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path / "cache"))

    cfg = get_dataset("frappe_x1", data_dir=tmp_path / "data", download=True)
    folder = tmp_path / "data" / "frappe_x1"
    assert [r["path"] for r in server.requests] == ["/gone/Frappe_x1.zip", "/mirror/Frappe_x1.zip"]
    assert {s: Path(p) for s, p in cfg.files.items()} == {s: folder / f"{s}.csv" for s in csvs}
    assert all((folder / f"{s}.csv").read_bytes() == b for s, b in csvs.items())
    assert sorted(p.name for p in folder.iterdir()) == ["test.csv", "train.csv", "valid.csv"]  # zip + tmp removed

    # a zip whose content does not match the published md5 is rejected
    facts["md5"] = dict(facts["md5"], test="0" * 32)
    with pytest.raises(ChecksumError, match="0{32}"):
        get_dataset("frappe_x1", data_dir=tmp_path / "data2", download=True)
