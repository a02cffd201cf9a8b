"""Real-browser fixtures: servers on free loopback ports, and headless Debian Chromium driven by Playwright.

Playwright's Python client drives the system's ``chromium`` (Debian's package, installed by ``make setup``)
through ``executable_path``; no browser is downloaded. Screenshots go to ``$SVDPIPE_SCREENSHOTS``, default
pytest's temporary folder, and are kept after the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_HINT = ("run `make setup` (it installs Debian's chromium with apt and the playwright client with pip; "
              "where .venv is already set up, `bash scripts/setup.sh` runs the installation again)")


# ---------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post_json(url: str, payload: dict, timeout: float = 10.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _restore_sigint() -> None:
    """In the child: own process group (for teardown) and SIGINT at its default, so that Python programs
    (dagster dev) turn it into KeyboardInterrupt even when pytest itself runs with SIGINT ignored (a
    background job of a non-interactive shell)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """A command in its own process group, its output in a log file; stopped with SIGINT, SIGTERM, SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stop_signal: signal.Signals = signal.SIGINT):
        self.name, self.cmd, self.log, self.stop_signal = name, cmd, log, stop_signal
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     preexec_fn=_restore_sigint)  # noqa: PLW1509 - setsid + one signal call
        self.pgid = self.proc.pid  # setsid made it the group leader

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> None:
        pytest.fail(f"{self.name}: {why}\ncommand: {' '.join(self.cmd)}\nlog {self.log} (last lines):\n"
                    f"{self.log_tail()}", pytrace=False)

    def wait_until(self, ready: Callable[[], bool | str], timeout: float, what: str) -> None:
        """Poll ``ready()`` until it returns True; a string it returns (or raises) is the last reason."""
        deadline = time.monotonic() + timeout
        reason = "not polled yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} before {what}")
            try:
                result = ready()
            except (OSError, ValueError, KeyError) as e:  # connection refused, reset, bad JSON while starting
                result = f"{type(e).__name__}: {e}"
            if result is True:
                return
            reason = str(result)
            time.sleep(0.5)
        self.fail(f"not {what} after {timeout:.0f} s (last: {reason})")

    def _group_alive(self) -> bool:
        self.proc.poll()  # reap the leader, or its zombie keeps the group "alive"
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self) -> None:
        """The stop signal to the group (SIGINT: what Ctrl-C does; dagster dev then shuts its services down),
        then SIGTERM, then SIGKILL, each after a grace period; every process of the group is gone afterwards."""
        for sig, grace in ((self.stop_signal, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not self._group_alive():
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(0.2)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment without svdpipe/Dagster/MLflow settings of the caller, with stores under ``tmp``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SVDPIPE_", "DAGSTER_", "MLFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", SVDPIPE_HOME=str(tmp / "home"), SVDPIPE_DATA_ROOT=str(tmp / "data"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}", **extra)
    return env


# ---------------------------------------------------------------------------------------------- browser


def chromium_executable() -> str:
    """``$SVDPIPE_CHROMIUM``, else Debian's ``chromium`` on PATH; a missing browser fails the test."""
    explicit = os.environ.get("SVDPIPE_CHROMIUM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"SVDPIPE_CHROMIUM={explicit} is not an executable file; unset it and {SETUP_HINT}",
                        pytrace=False)
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"Chromium is not installed (no `chromium` on PATH): {SETUP_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    # Never inside the repository: under pytest's temporary folder unless SVDPIPE_SCREENSHOTS names one.
    folder = Path(os.environ.get("SVDPIPE_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (no sandbox: the tests may run as root), one per module.

    Not per session: Playwright's sync API keeps an asyncio loop running on the main thread while it is started,
    and later tests that call asyncio.run (Dagster's automation evaluator does) would fail beside it.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright Python client is not installed: {SETUP_HINT}", pytrace=False)
    executable = chromium_executable()
    pw = sync_playwright().start()
    try:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        except Exception as e:  # noqa: BLE001 - report any launch failure with the hint
            pytest.fail(f"could not start {executable} headless: {e}\n{SETUP_HINT}", pytrace=False)
        yield browser
        browser.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser):
    """A fresh page (own context: no cookies or local storage from other tests), 1600x1000."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    yield pg
    context.close()


class Shots:
    """Saves screenshots of a page under the kept folder; remembers the paths for assertion messages."""

    def __init__(self, folder: Path):
        self.folder = folder

    def take(self, page, name: str, full_page: bool = False) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def shots(screenshot_dir) -> Shots:
    return Shots(screenshot_dir)


# ---------------------------------------------------------------------------------------------- servers under test


class DagsterUI:
    def __init__(self, server: Server, url: str, home: Path):
        self.server, self.url, self.home = server, url, home

    def graphql(self, query: str) -> dict:
        return http_post_json(f"{self.url}/graphql", {"query": query})


_WORKSPACE_QUERY = """{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
  ... on PythonError { message } } }"""


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[DagsterUI]:
    """``svdpipe ui`` (dagster dev: webserver, daemon, code server) on a free loopback port, with a temporary
    DAGSTER_HOME; ready once the webserver answers and the code location has loaded without error."""
    tmp = tmp_path_factory.mktemp("dagster_ui")
    home = tmp / "dagster_home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svdpipe = str(Path(sys.executable).parent / "svdpipe")
    server = Server("svdpipe ui (dagster dev)", [svdpipe, "ui", "--host", "127.0.0.1", "--port", str(port)],
                    tmp / "dagster-dev.log", env=isolated_env(tmp, DAGSTER_HOME=str(home)), cwd=REPO)
    ui = DagsterUI(server, url, home)
    try:
        def webserver_up():
            status, body = http_get(f"{url}/server_info")
            return True if status == 200 and b"dagster_webserver_version" in body else f"HTTP {status}"

        def location_loaded():
            data = ui.graphql(_WORKSPACE_QUERY)["data"]["workspaceOrError"]
            if data["__typename"] != "Workspace":
                return f"workspace error: {data.get('message')}"
            entries = data["locationEntries"]
            if not entries:
                return "no code location yet"
            for entry in entries:
                err = entry["locationOrLoadError"]
                if err and err["__typename"] == "PythonError":
                    server.fail(f"code location {entry['name']} failed to load:\n{err['message']}")
                if entry["loadStatus"] != "LOADED" or not err:
                    return f"location {entry['name']} {entry['loadStatus']}"
            return True

        server.wait_until(webserver_up, timeout=120, what="serving /server_info")
        server.wait_until(location_loaded, timeout=120, what="done loading the code location")
        yield ui
    finally:
        server.stop()


class MlflowUI:
    def __init__(self, server: Server, url: str, experiment_id: str, runs: dict, experiment: str):
        self.server, self.url, self.experiment_id = server, url, experiment_id
        self.runs = runs  # curation_variant -> the pipeline's evaluation run (mlflow.entities.Run)
        self.experiment = experiment


EXPERIMENT = "svdpipe"  # SvdpipeConfig.mlflow.experiment's default


@pytest.fixture(scope="module")
def mlflow_ui(trained, tmp_path_factory) -> Iterator[MlflowUI]:
    """``mlflow server`` on a free loopback port over the store that `svdpipe train` and `svdpipe evaluate`
    wrote (the shared ``trained`` fixture): the variants' evaluation runs are the pipeline's own."""
    from mlflow import MlflowClient

    cli = trained[0]
    tmp = tmp_path_factory.mktemp("mlflow_ui")
    store = cli.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = {}
    for variant in ("uncurated", "svd"):
        (run,) = client.search_runs(experiment_id, f"tags.stage = 'eval' and tags.curation_variant = '{variant}'")
        runs[variant] = run
    artifacts = (tmp / "artifacts").as_uri()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    # No background job runner (GenAI jobs): seven huey consumers would only slow down the start on 2 cores.
    env = isolated_env(tmp, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = Server("mlflow server", [mlflow_bin, "server", "--backend-store-uri", store,
                                      "--default-artifact-root", artifacts, "--host", "127.0.0.1",
                                      "--port", str(port), "--workers", "1"],
                    tmp / "mlflow-server.log", env=env, cwd=tmp, stop_signal=signal.SIGTERM)
    try:
        def api_up():
            status, body = http_get(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}")
            if status != 200:
                return f"HTTP {status}"
            return True if json.loads(body)["experiment"]["name"] == EXPERIMENT else "experiment missing"

        server.wait_until(api_up, timeout=120, what="answering the REST API")
        yield MlflowUI(server, url, experiment_id, runs, EXPERIMENT)
    finally:
        server.stop()


class DemoUI:
    """`svdpipe ui` over a project whose settings point at a trained data root, as after `make demo`."""

    def __init__(self, server: Server, url: str, root: Path, mlflow_uri: str):
        self.server, self.url, self.root, self.mlflow_uri = server, url, root, mlflow_uri

    def graphql(self, query: str) -> dict:
        return http_post_json(f"{self.url}/graphql", {"query": query})


@pytest.fixture(scope="module")
def demo_ui(trained, tmp_path_factory) -> Iterator[DemoUI]:
    """The README's path on the shared ``trained`` fixture (what `make demo` runs): its data root, MLflow store
    and Dagster instance copied into a project home whose ``svdpipe.yaml`` records the data root (what
    `make demo` writes, by `svdpipe settings`), then `svdpipe ui` started from another folder with only
    ``SVDPIPE_HOME`` set (what `make ui` exports). Copies: the tests here write runs, the shared fixture stays."""
    cli, root, _, _ = trained
    tmp = tmp_path_factory.mktemp("demo_ui")
    home = tmp / "project"
    shutil.copytree(root, home / "demo-data" / "root")
    shutil.copytree(cli.env["DAGSTER_HOME"], home / ".dagster")
    source_db = Path(cli.env["MLFLOW_TRACKING_URI"][len("sqlite:///"):])
    (tmp / "mlflow").mkdir()
    shutil.copyfile(source_db, tmp / "mlflow" / "mlflow.db")
    mlflow_uri = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVDPIPE_", "DAGSTER_", "MLFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", SVDPIPE_HOME=str(home), MLFLOW_TRACKING_URI=mlflow_uri)
    # The evaluation settings the pipeline ran with (small, for the CPU), from its own MLflow params.
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    params = client.search_runs(experiment_id, "tags.stage = 'eval'", max_results=1)[0].data.params
    settings = [f"{k}={params[k]}" for k in ("evaluation.max_videos", "evaluation.sample_steps")]

    svdpipe = str(Path(sys.executable).parent / "svdpipe")
    subprocess.run([svdpipe, "settings", "--data-root", "demo-data/root", *(a for s in settings for a in ("--set", s))],
                   env=env, cwd=home, check=True, capture_output=True, timeout=300)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    server = Server("svdpipe ui on the demo project", [svdpipe, "ui", "--host", "127.0.0.1", "--port", str(port)],
                    tmp / "dagster-dev.log", env=env, cwd=elsewhere)
    ui = DemoUI(server, url, home / "demo-data" / "root", mlflow_uri)
    try:
        server.wait_until(lambda: http_get(f"{url}/server_info")[0] == 200 or "starting", timeout=180,
                          what="serving /server_info")

        def loaded():
            data = ui.graphql(_WORKSPACE_QUERY)["data"]["workspaceOrError"]
            entries = data.get("locationEntries") or []
            return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries) or "loading"

        server.wait_until(loaded, timeout=180, what="done loading the code location")
        yield ui
    finally:
        server.stop()
