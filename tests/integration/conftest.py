"""Integration fixtures: a real Redis server on a loopback port, a trained model in a data directory, real
`celery worker` processes and the API served by uvicorn in its own process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_port
from thaw.client import wait_job

__all__ = ["ApiServer", "RedisServer", "Worker", "wait_job"]

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


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory, catalog: Path, redis_url: str) -> dict[str, str]:
    """A data directory with a trained, indexed, active model; the environment API and workers share."""
    from encoders.artifacts import save_version
    from encoders.training import TrainConfig, train
    from entrypoints.runtime import build_runtime
    from services.embedding import index_dataset
    from services.events import import_interactions
    from thaw.datasets import load_dataset, split_items
    from thaw.settings import Settings

    data_dir = tmp_path_factory.mktemp("thaw")
    env = {
        **os.environ,
        "THAW_DATA_DIR": str(data_dir),
        "THAW_BROKER_URL": redis_url,
        "THAW_BROKER_VISIBILITY_TIMEOUT": "4",
        "THAW_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "PYTHONPATH": str(ROOT),
    }
    settings = Settings(data_dir=data_dir, broker_url=redis_url)
    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    model = train(ds, split, TrainConfig(seed=0, epochs=15), progress=False)
    rt = build_runtime(settings)
    save_version(model, rt.registry)
    index_dataset(rt, model, ds, split.warm)
    import_interactions(rt, ds.interactions.for_items(split.warm))
    rt.close()
    return env


class Worker:
    """A `celery -A entrypoints.worker worker` process."""

    def __init__(self, env: dict[str, str], name: str) -> None:
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


class ApiServer:
    """The API served by uvicorn in its own process."""

    def __init__(self, env: dict[str, str]) -> None:
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
        )
        wait_port(self.port, 60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


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
