"""Test-session settings shared by every layer."""

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tests.litellm_proxy_venv import ProxyVenv

# CI runs the same examples every time (a red build names a real bug, not a dice roll);
# locally each run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def litellm_proxy_venv() -> "ProxyVenv":
    """The cached virtualenv of the light install beside ``litellm[proxy]`` (built on first
    use, minutes and network; reused after): see tests/litellm_proxy_venv.py."""
    from tests.litellm_proxy_venv import proxy_venv

    return proxy_venv()


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Test files go whole to a test process, and tests/e2e all to the same one: they share
    a session dev stack (tests/e2e/conftest.py), which a second process would start again
    and keep running beside the other tests."""
    from xdist.scheduler import LoadFileScheduling

    class OneDevStack(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return OneDevStack(config, log)  # type: ignore[arg-type]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the session's catalog server (tests/stores.py), if a test started it."""
    from tests.stores import stop_catalog_server

    stop_catalog_server()
