"""`svdpipe ui` serves the Dagster UI on loopback with DAGSTER_HOME under the project home (not the working
directory) and shows svdpipe's assets."""

import json
import os
import signal
import subprocess
import time
import urllib.request

from infra.s3server import free_port


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_ui_serves_the_asset_graph(cli, tmp_path):
    port = free_port()
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The default: <project home>/.dagster, whatever the working directory.
    env = {**{k: v for k, v in cli.env.items() if k != "DAGSTER_HOME"}, "SVDPIPE_HOME": str(home)}
    # Output goes to a file: a pipe nobody reads would block the server once its buffer fills.
    log = tmp_path / "ui.log"
    proc = subprocess.Popen([cli.svdpipe, "ui", "--port", str(port)], cwd=elsewhere, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        keys = None
        while time.monotonic() < deadline and keys is None:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                data = _graphql(port, "{ assetNodes { assetKey { path } } }")
                keys = {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}
            except (OSError, KeyError, TypeError):
                time.sleep(0.5)
        assert keys is not None, "the Dagster UI did not answer"
        assert {"ingested_batch", "videos"} <= keys
        assert (home / ".dagster" / "dagster.yaml").exists() and not (elsewhere / ".dagster").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
