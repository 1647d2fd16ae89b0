"""The README's path to production, as a user runs it: `ctrlab export` a trained run, `ctrlab serve` it in
its own process on loopback, and POST the README's own example request."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ctrlab.cli import main

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readme_request() -> bytes:
    """The JSON body of the README's curl example."""
    text = (REPO / "README.md").read_text()
    body = re.search(r"curl -s localhost:8000/predict -d '(.*?)'", text, re.S).group(1)
    return json.dumps(json.loads(body)).encode()


def test_export_serve_predict_from_the_command_line(frappe_export, tmp_path, capsys):
    run, _ = frappe_export
    art = tmp_path / "artifacts" / "finalmlp"
    assert main(["export", str(run), "--output", str(art)]) == 0
    out = capsys.readouterr().out
    assert f"serve it: ctrlab serve {art}" in out and "parity ONNX Runtime vs PyTorch" in out
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "ctrlab.cli", "serve", str(art), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                health = json.load(urllib.request.urlopen(f"{url}/health", timeout=1))
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        assert health["status"] == "ok"
        req = urllib.request.Request(f"{url}/predict", data=_readme_request(), method="POST",
                                     headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=10))
        assert answer["model"] == "FinalMLP" and answer["rows"] == 1 and 0 < answer["probabilities"][0] < 1
        form = urllib.request.Request(f"{url}/predict", data=_readme_request(), method="POST")  # urllib: a form type
        try:
            urllib.request.urlopen(form, timeout=10)
            raise AssertionError("a form-encoded body was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 415 and "application/json" in json.load(err)["error"]
        for path in ("/docs", "/openapi.json"):
            try:
                urllib.request.urlopen(f"{url}{path}", timeout=10)
                raise AssertionError(f"{path} is served by default")
            except urllib.error.HTTPError as err:
                assert err.code == 404
        bad = urllib.request.Request(f"{url}/predict", data=b'{"records": [{"user": 1}]}', method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(bad, timeout=10)
            raise AssertionError("a record without most fields was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 422 and "missing field" in json.load(err)["error"]
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, not a traceback
        log = server.communicate(timeout=20)[0]
    assert f"serving FinalMLP (onnx) from {art} on http://127.0.0.1:{port}" in log
    assert "Traceback" not in log and "ctrlab serve: stopped" in log, log
    assert server.returncode == 130
