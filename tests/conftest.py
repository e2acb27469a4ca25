"""Shared pytest set-up: the test-host bench (fixtures and the `hosts` skip/fail rule), and the
opt-in `real_vllm` tier (skipped, with the reason shown, unless `-m real_vllm` selects it)."""

import pytest

pytest_plugins = ["hostbench.plugin"]

REAL_VLLM_REASON = (
    "opt-in tier: run `pytest -m real_vllm` (installs the real vllm==0.33.0 into a venv here: "
    "about 3 min and 9.4 GB, then kept in /var/cache/servekit-real-vllm)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.getoption("markexpr") or ""
    if "real_vllm" in expression and "not real_vllm" not in expression:
        return
    skip = pytest.mark.skip(reason=REAL_VLLM_REASON)
    for item in items:
        if item.get_closest_marker("real_vllm") is not None:
            item.add_marker(skip)
