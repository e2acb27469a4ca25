"""`pyinfra INVENTORY deploys/vllm.py --dry` through pyinfra's API (`@fake` hosts): the
change-detection pass lists, per host, the files the vLLM deploy would write and the units it
would (re)start, and still reads each host's state with one command."""

from __future__ import annotations

import logging
import re

import pytest
from test_vllm_deploy import converged, fake_secret, plans_of
from vllm_fakehost import bare_state, run_vllm_deploy, smi_rows

from servekit import secrets as secret_store

UNIT = "vllm-llama-3-1-8b-instruct"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_store, "read_secret", fake_secret)


def listed(caplog: pytest.LogCaptureFixture, host: str) -> list[str]:
    """What the dry run said it `will` do on `host`."""
    lines = [ANSI.sub("", r.getMessage()) for r in caplog.records]
    prefix = f"[@fake/{host}]"
    return [
        line.split(" will ", 1)[1] for line in lines if line.startswith(prefix) and " will " in line
    ]


def test_a_dry_run_on_a_bare_host_lists_the_files_and_units(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyinfra")
    plans = plans_of("single_a100.py")
    (name,) = plans
    runs = run_vllm_deploy(
        plans, {name: bare_state()}, {name: smi_rows("A100-SXM4-80GB", 1, "580.95.05")}, dry=True
    )
    said = listed(caplog, name)
    for path in (
        "/etc/vllm/llama-3-1-8b-instruct.yaml",
        "/etc/vllm/llama-3-1-8b-instruct.env",
        f"/etc/systemd/system/{UNIT}.service",
        "/etc/servekit/firewall.nft",
    ):
        assert f"write {path}" in said, said
    assert f"restart {UNIT}.service" in said, said
    assert any(line.startswith("build /opt/vllm/venvs/0.33.0") for line in said), said
    # a dry run executes nothing: the host's state and nvidia-smi are only read
    assert [c for c in runs[name].commands if "report the state servekit" not in c
            and "nvidia-smi" not in c] == []  # fmt: skip


def test_a_dry_run_lists_only_what_changed_with_one_command(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyinfra")
    plans = plans_of("single_a100.py")
    (name,) = plans
    states = {name: converged(plans[name])}
    states[name]["paths"]["/etc/vllm/llama-3-1-8b-instruct.yaml"]["sha256"] = "old"
    runs = run_vllm_deploy(
        plans, states, {name: smi_rows("A100-SXM4-80GB", 1, "580.95.05")}, dry=True
    )
    assert listed(caplog, name) == [
        "write /etc/vllm/llama-3-1-8b-instruct.yaml",
        f"restart {UNIT}.service",
    ]
    assert len(runs[name].commands) == 1  # the one HostState read


def test_a_dry_run_on_a_converged_host_lists_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinfra")
    plans = plans_of("single_a100.py")
    (name,) = plans
    runs = run_vllm_deploy(
        plans,
        {name: converged(plans[name])},
        {name: smi_rows("A100-SXM4-80GB", 1, "580.95.05")},
        dry=True,
    )
    assert listed(caplog, name) == []
    assert len(runs[name].commands) == 1


def test_a_dry_run_says_which_host_each_change_is_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinfra")
    plans = plans_of("prod.py")
    states = {name: converged(plan) for name, plan in plans.items()}
    changed = "/etc/vllm/llama-3-1-70b-instruct.yaml"
    states["a100-1"]["paths"][changed]["sha256"] = "old"
    run_vllm_deploy(
        plans,
        states,
        {name: smi_rows("A100-SXM4-80GB", 8, "580.95.05") for name in plans},
        dry=True,
    )
    # a100-0 runs the gateway: it takes a100-1's replica out of rotation for its restart. The
    # change-detection pass runs each host's deploy in turn, so the gateway host lists the drain
    # only when a100-1 came first (the execution pass runs each step on every host, in order)
    assert listed(caplog, "a100-0") in (
        [],
        [
            "drain pool1/replica1 at the gateway",
            "put pool1/replica1 back in rotation at the gateway",
        ],
    )
    assert listed(caplog, "a100-1") == [
        f"write {changed}",
        "restart vllm-llama-3-1-70b-instruct.service",
    ]
