"""Deployment helpers for the at-scale setup in ``infra/`` (see docs/deployment.md).

- PostgreSQL: connection settings, creating and dropping the Dagster and MLflow databases, starting Debian's
  cluster when nothing listens on the port.
- Dagster: a ``$DAGSTER_HOME`` with the Postgres-backed instance (``infra/dagster.postgres.yaml``).
- MLflow: the tracking server on Postgres with artifacts proxied to S3, started on a loopback port.
- Kubernetes: the Helm values, checked in ``infra.helm_values``.
- DeepSpeed: the multi-node launch command that ``deepspeed --hostfile`` would run, built by DeepSpeed itself.

``python -m infra.deploy --help`` lists the commands.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


from infra.s3server import stop_process_group

INFRA = Path(__file__).resolve().parent
DAGSTER_POSTGRES_YAML = INFRA / "dagster.postgres.yaml"
HOSTFILE_EXAMPLE = INFRA / "deepspeed" / "hostfile.example"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# ---------------------------------------------------------------------------------------------- PostgreSQL

@dataclass(frozen=True)
class Postgres:
    """Where the PostgreSQL server is; defaults are the project machines' (loopback, user postgres, trust auth)."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""

    @classmethod
    def from_env(cls) -> Postgres:
        """libpq's own variables: PGHOST, PGPORT, PGUSER, PGPASSWORD."""
        env = os.environ
        return cls(env.get("PGHOST", cls.host), int(env.get("PGPORT", cls.port)), env.get("PGUSER", cls.user),
                   env.get("PGPASSWORD", cls.password))

    def url(self, db: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL (MLflow's --backend-store-uri). The driver is explicit: SQLAlchemy 2.1 picks psycopg 3."""
        from urllib.parse import quote

        auth = quote(self.user) + (f":{quote(self.password)}" if self.password else "")
        return f"postgresql+{driver}://{auth}@{self.host}:{self.port}/{db}"

    def dagster_env(self, db: str) -> dict[str, str]:
        """The variables infra/dagster.postgres.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": db}

    def is_up(self, timeout_s: float = 1.0) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s):
                return True
        except OSError:
            return False

    def connect(self, db: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password or None,
                                dbname=db, connect_timeout=10)
        conn.autocommit = True
        return conn

    def execute(self, sql: str, db: str = "postgres") -> list[tuple]:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that); return its rows."""
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        _check_db_name(name)
        self.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        """Drop it even while clients (a server being stopped) are still connected."""
        _check_db_name(name)
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def databases(self) -> list[str]:
        return sorted(r[0] for r in self.execute("SELECT datname FROM pg_database"))


def _check_db_name(name: str) -> None:
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (at most 63)")


def debian_clusters() -> list[tuple[str, str, int]]:
    """(version, name, port) of each cluster Debian's postgresql-common knows (empty without it)."""
    if not shutil.which("pg_lsclusters"):
        return []
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    return [(f[0], f[1], int(f[2])) for f in (line.split() for line in out.splitlines()) if len(f) >= 3]


def ensure_postgres(pg: Postgres, timeout_s: float = 60.0) -> None:
    """Return once ``pg`` accepts connections; start Debian's cluster on that port (pg_ctlcluster) if it is down."""
    if pg.is_up():
        return
    clusters = [c for c in debian_clusters() if c[2] == pg.port]
    if not clusters or pg.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConnectionError(f"no PostgreSQL on {pg.host}:{pg.port} and no local Debian cluster for that port")
    version, name, _ = clusters[0]
    proc = subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True, text=True, check=False)
    deadline = time.monotonic() + timeout_s
    while not pg.is_up():
        if time.monotonic() > deadline:
            raise ConnectionError(f"pg_ctlcluster {version} {name} start did not bring up {pg.host}:{pg.port}: "
                                  f"{proc.stdout}{proc.stderr}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- Dagster

def write_dagster_home(home: str | Path) -> Path:
    """A DAGSTER_HOME whose instance is infra/dagster.postgres.yaml (connection from DAGSTER_PG_* variables)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_POSTGRES_YAML, home / "dagster.yaml")
    return home


# ---------------------------------------------------------------------------------------------- MLflow

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server_command(backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1",
                          port: int = 5000, workers: int = 1) -> list[str]:
    """``mlflow server`` on a SQL store, artifacts proxied by the server to ``artifacts_destination`` (S3).

    With --serve-artifacts, new experiments get ``mlflow-artifacts:/`` locations: clients upload through the
    server and need no S3 credentials of their own; the server needs the AWS_* / MLFLOW_S3_ENDPOINT_URL variables.
    """
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", artifacts_destination,
            "--host", host, "--port", str(port), "--workers", str(workers)]


@dataclass
class MlflowServer:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=15)


def s3_server_env(endpoint: str | None = None) -> dict[str, str]:
    """The S3 variables the MLflow server needs, from AWS_* (and MLFLOW_S3_ENDPOINT_URL from AWS_ENDPOINT_URL)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    endpoint = endpoint or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    return env


def start_mlflow_server(backend_store_uri: str, artifacts_destination: str, logdir: str | Path,
                        env: dict[str, str] | None = None, port: int | None = None, host: str = "127.0.0.1",
                        timeout_s: float = 180.0) -> MlflowServer:
    """Start the tracking server (its own process group) and return once /health answers OK."""
    port = port or free_port()
    log = Path(logdir) / "mlflow-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **s3_server_env(), **(env or {})}
    cmd = mlflow_server_command(backend_store_uri, artifacts_destination, host, port)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=log.parent,
                                start_new_session=True)
    server = MlflowServer(proc, f"http://{host}:{port}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"mlflow server not healthy within {timeout_s}s; log:\n{log.read_text()[-4000:]}")


# ---------------------------------------------------------------------------------------------- DeepSpeed

@dataclass
class Launch:
    cmd: list[str]
    hosts: list[str]
    world_info: dict[str, list[int]]
    master_addr: str

    @property
    def world_size(self) -> int:
        return sum(len(slots) for slots in self.world_info.values())


def multinode_launch(hostfile: str | Path, module: str = "training.run", user_args: list[str] | None = None,
                     master_addr: str | None = None, include: str = "", exclude: str = "",
                     num_nodes: int = -1, num_gpus: int = -1, master_port: int = 29500) -> Launch:
    """The pdsh command ``deepspeed --hostfile HOSTFILE --module MODULE ...`` would run, without running it.

    Built with DeepSpeed's own pieces in the order its launcher (deepspeed.launcher.runner.main) uses them:
    the hostfile parser, --include/--exclude filtering, --num_nodes/--num_gpus, the world-info encoding and the
    PDSH runner's command. Skipped: the ssh reachability check and the pdsh presence check.
    """
    from deepspeed.launcher import runner
    from deepspeed.launcher.multinode_runner import PDSHRunner

    pool = runner.fetch_hostfile(str(hostfile))
    if not pool:
        raise ValueError(f"{hostfile}: no hosts")
    argv = ["--hostfile", str(hostfile), "--master_port", str(master_port), "--launcher", "pdsh",
            "--num_nodes", str(num_nodes), "--num_gpus", str(num_gpus), "--module"]
    if include:
        argv += ["--include", include]
    if exclude:
        argv += ["--exclude", exclude]
    argv += ["--master_addr", master_addr or next(iter(pool)), module, *(user_args or [])]
    args = runner.parse_args(argv)
    if (include or exclude) and (num_nodes >= 0 or num_gpus >= 0):
        raise ValueError("Cannot specify num_nodes/gpus with include/exclude")  # as runner.main refuses
    active = runner.parse_inclusion_exclusion(pool, args.include, args.exclude)
    active = runner.apply_num_nodes_and_gpus(active, args.num_nodes, args.num_gpus)
    world_info_b64 = runner.encode_world_info(active)
    cmd, _kill, _env = PDSHRunner(args, world_info_b64).get_cmd(dict(os.environ), active)
    return Launch(cmd=cmd, hosts=list(active), world_info={h: list(s) for h, s in active.items()},
                  master_addr=args.master_addr)


# ---------------------------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("createdb", help="create Postgres databases (PGHOST/PGPORT/PGUSER/PGPASSWORD)")
    c.add_argument("names", nargs="+")
    c = sub.add_parser("dagster-home", help="write DIR/dagster.yaml (Postgres instance); print its variables")
    c.add_argument("dir")
    c.add_argument("--db", default="dagster")
    c = sub.add_parser("mlflow-server", help="serve MLflow on Postgres with artifacts in S3 (until interrupted)")
    c.add_argument("--db", default="mlflow")
    c.add_argument("--artifacts", required=True, help="s3://bucket/prefix")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=5000)
    c.add_argument("--workers", type=int, default=1)
    sub.add_parser("check-helm", help="validate infra/helm/*.yaml with the chart model and dagster-k8s")
    c = sub.add_parser("deepspeed-cmd", help="print the multi-node launch command for a hostfile (dry run)")
    c.add_argument("--hostfile", default=str(HOSTFILE_EXAMPLE))
    c.add_argument("--module", default="training.run")
    c.add_argument("user_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    pg = Postgres.from_env()
    if a.cmd == "createdb":
        ensure_postgres(pg)
        existing = set(pg.databases())
        for name in a.names:
            if name not in existing:
                pg.create_database(name)
            print(f"{pg.url(name)}")
    elif a.cmd == "dagster-home":
        home = write_dagster_home(a.dir)
        print(f"export DAGSTER_HOME={home.resolve()}")
        for k, v in pg.dagster_env(a.db).items():
            print(f"export {k}={v}")
    elif a.cmd == "mlflow-server":
        cmd = mlflow_server_command(pg.url(a.db), a.artifacts, a.host, a.port, a.workers)
        os.execve(cmd[0], cmd, {**os.environ, **s3_server_env()})
    elif a.cmd == "check-helm":
        from infra.helm_values import HELM_VALUES, TRAINING_RUN_K8S, check_helm

        checked = check_helm()
        gpus = checked["step_job"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        print(f"ok: {HELM_VALUES.name} and {TRAINING_RUN_K8S.name} validate; training step pod limits {gpus}")
    elif a.cmd == "deepspeed-cmd":
        launch = multinode_launch(a.hostfile, a.module, a.user_args)
        print(f"# {len(launch.hosts)} nodes, world size {launch.world_size}, master {launch.master_addr}")
        print(" ".join(launch.cmd))


if __name__ == "__main__":
    main()
