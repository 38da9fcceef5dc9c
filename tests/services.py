"""Real services for the integration tests, started and stopped by the tests on 127.0.0.1: a Spark
standalone cluster (master + workers from the installed pyspark package) and an MLflow tracking server.

Every process runs in its own process group, so a test can kill one worker together with the executors
and Python workers it launched, and teardown leaves nothing behind.
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
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

BIN = Path(sys.executable).parent


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read().decode())


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5,
             alive: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the log's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 (not up yet)
            pass
        if alive is not None and alive.poll() is not None:
            break
        time.sleep(every)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{tail}")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal ``proc``'s whole process group (it was started with ``start_new_session=True``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def loopback_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": spark_home(),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


class _Service:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.wait(timeout=20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SparkCluster(_Service):
    """``spark-class ...master.Master`` + ``workers`` x ``spark-class ...worker.Worker`` on 127.0.0.1."""

    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1, memory: str = "2g"):
        super().__init__(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        spark_class = [str(Path(spark_home()) / "bin" / "spark-class")]
        env = loopback_env(SPARK_LOG_DIR=str(workdir), SPARK_WORKER_DIR=str(workdir / "work"))
        try:
            master, log = self._start("master", [*spark_class, "org.apache.spark.deploy.master.Master",
                                                 "--host", "127.0.0.1", "--port", str(self.port),
                                                 "--webui-port", str(self.ui_port)], env)
            wait_for("spark master", lambda: self.state()["status"] == "ALIVE", 90, alive=master, log=log)
            self.workers: list[subprocess.Popen] = []
            for i in range(workers):
                w, wlog = self._start(f"worker{i}", [*spark_class, "org.apache.spark.deploy.worker.Worker",
                                                      "--host", "127.0.0.1", "--cores", str(cores),
                                                      "--memory", memory, "--webui-port", str(free_port()),
                                                      "--work-dir", str(workdir / f"work{i}"), self.url], env)
                self.workers.append(w)
            wait_for(f"{workers} alive workers", lambda: len(self.alive_workers()) == workers, 90,
                     alive=master, log=log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        # each application's executors unpacked the shipped environment (GBs): keep only their logs
        for env in self.workdir.glob("work*/app-*/*/environment"):
            shutil.rmtree(env, ignore_errors=True)

    def state(self) -> dict:
        return get_json(f"http://127.0.0.1:{self.ui_port}/json/")

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]


class MlflowServer(_Service):
    """``mlflow server`` with a sqlite backend and a local artifact store, serving artifacts itself."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "mlflow.db"
        self.artifacts = workdir / "artifacts"
        proc, log = self._start("mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                                                  "--port", str(self.port), "--workers", "1",
                                                  "--backend-store-uri", f"sqlite:///{self.db}",
                                                  "--artifacts-destination", str(self.artifacts)],
                                loopback_env())
        try:
            wait_for("mlflow server", lambda: urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200,
                     120, alive=proc, log=log)
        except BaseException:
            self.stop()
            raise
