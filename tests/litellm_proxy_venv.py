"""A LiteLLM proxy in a virtualenv of its own, beside spend-ledger's light install.

``proxy_venv()`` builds ``.venv-litellm-proxy/<key>/`` once: ``pip install -e .[litellm]``
(the client side, no server extra) with ``tests/litellm_proxy_requirements.txt``
(``litellm[proxy]`` and the pins it needs to start). The key is a hash of what decides
what gets installed (that requirements file, ``pyproject.toml``, this module, the Python
version, the checkout's path), so a change to any of them builds a new venv; otherwise it
is reused (the install is editable, so code changes need no rebuild). A file lock keeps
two test runs from building it at once; a build that did not finish has no ``ready``
stamp and is built again. Built here: 54 s with a warm pip cache; reused: the six tests
of tests/e2e/test_litellm_proxy_install.py take 14 s.

``running_proxy(venv, config, log_path)`` starts ``litellm --config`` on a free loopback
port, waits until ``/health/liveliness`` answers, and stops it by pid afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from ledger.broker import free_port
from ledger.processes import ChildProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".venv-litellm-proxy"
REQUIREMENTS = Path(__file__).resolve().parent / "litellm_proxy_requirements.txt"
KEY_FILES = (REQUIREMENTS, REPO_ROOT / "pyproject.toml", Path(__file__).resolve())
HOST = "127.0.0.1"
# pip resolves and downloads about 250 distributions on a machine without a pip cache.
BUILD_TIMEOUT_S = 900.0
# The proxy imports for about 5 s here; a loaded shared machine takes several times that.
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
# Keeps the proxy on loopback: LiteLLM otherwise fetches its price map from GitHub at import.
PROXY_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


@dataclass(frozen=True)
class ProxyVenv:
    """The cached virtualenv: its interpreter, its ``litellm`` and ``spend-ledger`` scripts."""

    root: Path
    build_s: float | None  # how long its build took, when this run built it; None: reused

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def litellm(self) -> Path:
        return self.root / "bin" / "litellm"

    @property
    def spend_ledger(self) -> Path:
        return self.root / "bin" / "spend-ledger"

    def distributions(self) -> dict[str, str]:
        """Every installed distribution, normalised name -> version."""
        script = (
            "import importlib.metadata as m, json, re\n"
            "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
            " for d in m.distributions()}))"
        )
        answer = subprocess.run([str(self.python), "-c", script], capture_output=True, text=True, check=True)
        versions: dict[str, str] = json.loads(answer.stdout)
        return versions

    def run(self, arguments: list[str], cwd: Path, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run one of the venv's programs (``python``, ``spend-ledger``) in ``cwd``, with the
        venv first on PATH and nothing of this test run's environment but HOME."""
        return subprocess.run(
            [str(self.root / "bin" / arguments[0]), *arguments[1:]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=cwd,
            env={"PATH": f"{self.root / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home()), **PROXY_ENV},
        )


def venv_key() -> str:
    """The hash of what decides the venv's contents."""
    # the editable install points at this checkout: a checkout elsewhere gets a venv of its own
    digest = hashlib.sha256(f"{sys.version_info.major}.{sys.version_info.minor} {REPO_ROOT}".encode())
    for path in KEY_FILES:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def proxy_venv() -> ProxyVenv:
    """The venv for this key, built if it is missing or unfinished; older keys are removed."""
    CACHE_DIR.mkdir(exist_ok=True)
    root = CACHE_DIR / venv_key()
    with (CACHE_DIR / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "ready").exists():
            return ProxyVenv(root, build_s=None)
        started = time.monotonic()
        _build(root)
        build_s = time.monotonic() - started
        (root / "ready").write_text(f"{build_s:.1f}\n")
        for stale in CACHE_DIR.iterdir():
            if stale.is_dir() and stale != root:
                shutil.rmtree(stale, ignore_errors=True)
        return ProxyVenv(root, build_s=build_s)


def _build(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    install = [
        str(root / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        str(REQUIREMENTS),
        "-e",
        f"{REPO_ROOT}[litellm]",
    ]
    answer = subprocess.run(install, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if answer.returncode != 0:
        raise RuntimeError(f"building {root} failed ({' '.join(install)}):\n{answer.stderr[-4000:]}")


@dataclass
class RunningProxy:
    """A started ``litellm --config`` process on ``base_url``."""

    process: ChildProcess
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_proxy(
    venv: ProxyVenv,
    config: Mapping[str, Any] | Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[RunningProxy]:
    """``litellm --config`` (a dict is written as YAML next to the log) on a free loopback
    port, ready when ``/health/liveliness`` answers 200; stopped by pid on exit."""
    if isinstance(config, Path):
        config_path = config
    else:
        config_path = log_path.with_suffix(".config.yaml")
        config_path.write_text(yaml.safe_dump(dict(config)))
    port = free_port(HOST)
    command = [str(venv.litellm), "--config", str(config_path), "--host", HOST, "--port", str(port)]
    proxy = RunningProxy(ChildProcess(command, {**PROXY_ENV, **(env or {})}, log_path), port, log_path)
    proxy.process.start()
    try:
        _wait_ready(proxy, ready_timeout_s)
        yield proxy
    finally:
        proxy.process.stop(STOP_TIMEOUT_S)


def _wait_ready(proxy: RunningProxy, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proxy.process.running():
            raise RuntimeError(f"litellm exited with {proxy.process.exit_code}:\n{proxy.log()[-4000:]}")
        try:
            if httpx.get(f"{proxy.base_url}/health/liveliness", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"litellm did not answer /health/liveliness within {timeout_s} s:\n{proxy.log()[-4000:]}")
