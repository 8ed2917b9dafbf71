"""Integration fixtures: a real Redis server and a real PostgreSQL server on loopback ports, a trained model in a
data directory, real `celery worker` processes and the API served by uvicorn in its own process."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, wait_port
from thaw.client import wait_job

__all__ = ["ApiServer", "PostgresServer", "RedisServer", "Worker", "make_service_env", "wait_job"]

ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """`redis-server` on a free loopback port, without persistence; `restart()` loses every queued message, as a
    broker restart does."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
        self.exe, self.workdir, self.port = exe, workdir, free_port()
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([self.exe, *args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's binaries) on a free loopback port, its socket in its own directory,
    without fsync; as root, the cluster is made and run by the `postgres` (or `nobody`) user, since initdb refuses
    root. `database(name)` creates an empty database and returns its SQLAlchemy URL."""

    def __init__(self) -> None:
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name), reverse=True)
        found = [Path(p).parent for p in (shutil.which("initdb"),) if p]
        bindir = next((d for d in (*found, *debian) if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; make test installs postgresql")
        if importlib.util.find_spec("psycopg") is None:
            pytest.skip("the psycopg driver is not installed (pip install -e .)")
        self.bindir, self.port = bindir, free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="thaw-pg-"))  # pytest's temp dirs are private to root
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = next(u for u in ("postgres", "nobody") if _user_exists(u))
            shutil.chown(self.workdir, user)
            self.as_user = ["runuser", "-u", user, "--"]
        data = self.workdir / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "thaw", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off"
        log = str(self.workdir / "server.log")
        self._run("pg_ctl", "-D", str(data), "-l", log, "-o", options, "-w", "-t", "60", "start")
        self.data = data

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / exe), *args], check=True, stdout=subprocess.DEVNULL)

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=thaw dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://thaw@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trained(catalog: Path) -> tuple[Any, Any, Any]:
    """The catalogue, its warm/cold split and a model trained on it (once per session)."""
    from encoders.training import TrainConfig, train
    from thaw.datasets import load_dataset, split_items

    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    return ds, split, train(ds, split, TrainConfig(seed=0, epochs=15), progress=False)


def make_service_env(
    data_dir: Path,
    trained: tuple[Any, Any, Any],
    redis_url: str,
    database_url: str | None = None,
    warm_items: int | None = None,
) -> dict[str, str]:
    """A data directory (and database) with the trained model indexed (its first `warm_items` warm items, or all) and
    served; the environment API and workers share."""
    from encoders.artifacts import save_version
    from entrypoints.runtime import build_runtime
    from services.embedding import index_dataset
    from services.events import import_interactions
    from thaw.settings import Settings

    env = {
        **os.environ,
        "THAW_DATA_DIR": str(data_dir),
        "THAW_BROKER_URL": redis_url,
        "THAW_BROKER_VISIBILITY_TIMEOUT": "4",
        "THAW_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "THAW_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        **({"THAW_DATABASE_URL": database_url} if database_url else {}),
    }
    ds, split, model = trained
    warm = split.warm[:warm_items]
    rt = build_runtime(Settings(data_dir=data_dir, broker_url=redis_url, database_url=database_url))
    save_version(model, rt.registry)
    index_dataset(rt, model, ds, warm)
    import_interactions(rt, ds.interactions.for_items(warm))
    rt.close()
    return env


@pytest.fixture(scope="session")
def service_env(
    tmp_path_factory: pytest.TempPathFactory, trained: tuple[Any, Any, Any], redis_url: str
) -> dict[str, str]:
    """A data directory with a trained, indexed, active model, on SQLite."""
    return make_service_env(tmp_path_factory.mktemp("thaw"), trained, redis_url)


class Worker:
    """A `celery -A entrypoints.worker worker` process (its log lines into `log` when given)."""

    def __init__(self, env: dict[str, str], name: str, log: Path | None = None) -> None:
        self.log = None if log is None else log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "entrypoints.worker",
                "worker",
                "-P",
                "solo",
                "-c",
                "1",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{name}@%h",
                "-l",
                "WARNING",
            ],
            env=env,
            cwd=ROOT,
            stderr=self.log,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.log is not None:
            self.log.close()


class ApiServer:
    """The API served by uvicorn in its own process (its log lines into `log` when given)."""

    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        self.log = None if log is None else log.open("ab")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "entrypoints.runtime:create_app",
                "--factory",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
            stderr=self.log,
        )
        wait_port(self.port, 60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        if self.log is not None:
            self.log.close()


@pytest.fixture(scope="session")
def api_url(service_env: dict[str, str]) -> Iterator[str]:
    server = ApiServer(service_env)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str]) -> Iterator[Worker]:
    w = Worker(service_env, "main")
    yield w
    w.stop()


@pytest.fixture()
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as c:
        yield c
