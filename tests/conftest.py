"""Test-session settings shared by every layer."""

import os

from hypothesis import HealthCheck, settings

# CI runs the same examples every time (a red build names a real bug, not a dice roll);
# locally each run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")
