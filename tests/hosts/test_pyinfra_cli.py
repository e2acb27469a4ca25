"""The pyinfra CLI converges three real hosts over SSH, and a second run changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostbench import run_pyinfra, write_inventory
from hostbench.plugin import HostFactory

pytestmark = pytest.mark.hosts

DEPLOY = Path(__file__).parent / "deploys" / "web_service.py"
PORT = 8080


def test_deploy_converges_and_second_run_changes_nothing(
    test_hosts: HostFactory, tmp_path: Path
) -> None:
    a, b, c = test_hosts(3)
    # c is reached as the cloud image's sudo user, as on a real cloud server.
    inventory = write_inventory(
        tmp_path / "inventory.py",
        {"web": [a, b, c]},
        host_data={c.name: {"ssh_user": "debian", "_sudo": True}},
        group_data={"web": {"web_port": PORT}},
    )

    first = run_pyinfra(inventory, DEPLOY).check()
    changed = first.changes()
    assert set(changed["Create the service user"]) == {a.name, b.name, c.name}, first
    assert set(changed["Run the service"]) == {a.name, b.name, c.name}, first

    # From the outside: each host's port answers from another host, under systemd, as the user.
    for server, client in ((a, b), (b, c), (c, a)):
        page = client.run(f"curl -fsS --max-time 10 http://{server.address}:{PORT}/").stdout
        assert page == f"hello from {server.name}\n"
        assert server.run("systemctl is-active skweb.service").stdout.strip() == "active"
        assert server.run("systemctl is-enabled skweb.service").stdout.strip() == "enabled"
        owner = server.run("ps -o user= -p $(systemctl show -p MainPID --value skweb.service)")
        assert owner.stdout.strip() == "skweb"
        assert server.run("dpkg-query -W -f '${Status}' jq").stdout == "install ok installed"

    second = run_pyinfra(inventory, DEPLOY).check()
    assert second.changes() == {}, second
    totals = second.report["results"]["totals"]
    assert totals["no_change"] == totals["hosts"] > 0, second
