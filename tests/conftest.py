"""Shared fixtures: a real SeaweedFS S3 server, a local HTTP server, and generated sample corpora."""

from __future__ import annotations

import os

# Under pytest-xdist (one worker per core) each worker and every process it starts computes on one thread, so
# the workers do not oversubscribe the cores (OpenMP threads spin while they wait for a core). Set before torch
# is imported anywhere in the worker; children inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import fcntl  # noqa: E402
import http.server  # noqa: E402
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from curation.sample_corpus import make_sample_corpus
from infra import s3server

REPO = Path(__file__).resolve().parent.parent
SVDPIPE = str(Path(sys.executable).parent / "svdpipe")
# Tests never read or write a person's project (its svdpipe.yaml, .dagster, .mlflow): an empty project home per
# test process, set before any test module builds the Dagster definitions from it.
os.environ["SVDPIPE_HOME"] = tempfile.mkdtemp(prefix="svdpipe-test-home-")
# The DVC repositories tests create have no .dvc/config of ours: no analytics daemon calling out from them.
os.environ["DVC_NO_ANALYTICS"] = "1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep what shares an expensive fixture on one pytest-xdist worker (``make test`` runs ``--dist loadgroup``).

    A module's tests stay together (its module-scoped fixtures are built once), and every test that reads the
    session's ``trained`` data root (both variants through all stages) runs on the same worker, which builds it once.
    """
    groups = {}
    for item in items:
        marker = item.get_closest_marker("xdist_group")
        if marker is None:
            group = "trained" if "trained" in item.fixturenames else item.nodeid.split("::")[0]
            marker = pytest.mark.xdist_group(group)
            item.add_marker(marker)
        groups[item] = marker.args[0] if marker.args else marker.kwargs.get("name")
    # Longest first: pytest-xdist hands out groups in collection order, so the minutes-long groups (the `trained`
    # root's and those of `slow` tests) start at once and the short ones fill the end, where a long group left
    # for last would run on one worker while the other idles.
    heavy = {groups[i] for i in items if groups[i] == "trained" or i.get_closest_marker("slow")}
    items.sort(key=lambda i: groups[i] not in heavy)  # stable: each group keeps its order


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """SeaweedFS on free loopback ports for the whole session; the AWS variables point at it."""
    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop(grace_s=0.5)  # its data is thrown away: no graceful shutdown to wait for (SeaweedFS takes > 5 s)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on this machine (head + one worker node), the test process its driver.

    Small on purpose (the machine is shared): a few logical CPUs per node, 128 MB object stores, no dashboard, and
    its own temporary folder (short, for Ray's socket paths), so ``ray.init()`` elsewhere never finds it.
    """
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    node = dict(num_cpus=3, object_store_memory=128 << 20)
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills once per pytest run, for read-only session fixtures.

    Under pytest-xdist every worker holds its own session, so each built the same corpus and curated root again;
    here the first worker to ask builds it in the run's folder under a lock and the others wait, then read it.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    run = tmp_path_factory.getbasetemp().parent  # this run's folder, one per `pytest` invocation
    folder, done = run / f"shared-{name}", run / f"shared-{name}.done"
    with open(run / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if a build fails
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """A small labelled corpus (3 videos, 6 broken inputs) shared by read-only tests."""
    out = built_once(tmp_path_factory, "corpus", lambda folder: make_sample_corpus(
        folder, seed=11, videos=3, seconds=6.0, fps=24, width=256, height=144))
    return out, json.loads((out / "truth.json").read_text())


@pytest.fixture(scope="session")
def formats(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny file per common video format, rotated phone and variable-frame-rate ones included
    (tests/format_corpus.py); read-only."""
    from format_corpus import make_format_corpus

    out = tmp_path_factory.mktemp("formats")
    return out, make_format_corpus(out)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, plus /flaky/<n>/<file> (503 for the first n requests), /chunked/<file> (no length),
    /trickle/<file> (one byte every 50 ms) and /redirect/<location> (302 to the rest of the path, unquoted).

    ``failures`` counts requests per path; each server gets its own subclass, so no count outlives its test.
    """

    failures: dict[str, int]

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        parts = self.path.strip("/").split("/")
        if parts[0] == "redirect":
            from urllib.parse import unquote

            self.send_response(302)
            self.send_header("Location", unquote(self.path.split("/redirect/", 1)[1]))
            self.end_headers()
            return
        if parts[0] == "trickle":
            import time

            data = (Path(self.directory) / "/".join(parts[1:])).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client gave up at its deadline, as the test wants
            return
        if parts[0] == "flaky":
            n, rest = int(parts[1]), "/".join(parts[2:])
            seen = self.failures.get(self.path, 0)
            self.failures[self.path] = seen + 1
            if seen < n:
                self.send_error(503, "try again")
                return
            self.path = "/" + rest
        elif parts[0] == "chunked":
            data = (Path(self.directory) / "/".join(parts[1:])).read_bytes()
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(0, len(data), 4096):
                    chunk = data[i : i + 4096]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client stopped reading at its size limit, as the test wants
            return
        super().do_GET()


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): a loopback HTTP server over a temporary folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler_class = type("Handler", (_Handler,), {"failures": {}})
    handler = lambda *a, **kw: handler_class(*a, directory=str(folder), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Cli:
    """Runs the installed ``svdpipe`` command in a subprocess with its own Dagster and MLflow stores."""

    def __init__(self, tmp_path: Path):
        self.env = dict(os.environ)
        self.env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"),
                        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
        for name in ("SVDPIPE_PROFILE", "SVDPIPE_DATA_ROOT"):
            self.env.pop(name, None)
        self.cwd = tmp_path
        self.svdpipe = SVDPIPE

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([SVDPIPE, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"svdpipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="session")
def curated_root(tmp_path_factory, corpus) -> Path:
    """A data root with the `corpus` ingested and curated into every variant (read-only: copy before writing)."""
    def build(base: Path) -> None:
        run = Cli(base)
        run("ingest", str(corpus[0]), "--data-root", str(base / "data"))
        run("curate", "--data-root", str(base / "data"))

    return built_once(tmp_path_factory, "curated", build) / "data"


@pytest.fixture
def curated_copy(curated_root, tmp_path) -> Path:
    """A private, writable copy of ``curated_root``."""
    dest = tmp_path / "data"
    shutil.copytree(curated_root, dest)
    return dest


TRAIN_STEPS = 16
TRAIN_SETTINGS = [f"training.stages.{s}.steps={TRAIN_STEPS}" for s in (1, 2, 3)] + [
    "evaluation.max_videos=3", "evaluation.sample_steps=3", "training.sample_steps=2"]


def train_args() -> list[str]:
    return [a for s in TRAIN_SETTINGS for a in ("--set", s)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, curated_root):
    """Both variants trained through all three stages with `svdpipe train`, then `svdpipe evaluate` (compared and
    registered): (cli, data root, train stdout, evaluate stdout). Read-only for the tests that share it."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "data"
    shutil.copytree(curated_root, root)
    cli = Cli(base)
    train = cli("train", "--data-root", str(root), *train_args())
    evaluate = cli("evaluate", "--data-root", str(root), *train_args())
    return cli, root, train, evaluate


@pytest.fixture
def watched_resources(corpus, tmp_path):
    """``make(*overrides)``: the Dagster resources of a data root under ``tmp_path`` whose ``ingest.watch`` folder
    holds one corpus video, with MLflow in ``tmp_path/m.db`` (plus ``overrides``)."""
    from assets.resources import MlflowResource, SvdpipeResource

    folder, truth = corpus
    src = tmp_path / "src"
    src.mkdir()
    name = sorted(truth["videos"])[0]
    shutil.copy(folder / name, src / name)

    def make(*overrides: str) -> dict:
        res = SvdpipeResource(profile="tiny", data_root=str(tmp_path / "root"), overrides=[
            f"ingest.watch={src}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", *overrides])
        return {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res)}

    return make
