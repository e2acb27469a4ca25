"""Shared pytest set-up: the test-host bench (fixtures and the `hosts` skip/fail rule)."""

pytest_plugins = ["hostbench.plugin"]
