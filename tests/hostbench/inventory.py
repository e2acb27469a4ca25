"""Write a pyinfra inventory file for test hosts, the way users write theirs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from pprint import pformat
from typing import Any

from .host import BenchHost


def write_inventory(
    path: Path,
    groups: Mapping[str, Sequence[BenchHost]],
    *,
    user: str = "root",
    host_data: Mapping[str, Mapping[str, Any]] | None = None,
    group_data: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a Python inventory with one list per group and return its path.

    Each host carries `ssh_hostname`/`ssh_user`/`ssh_key`, plus `host_data[host.name]`; a group
    with `group_data` becomes a `(hosts, data)` tuple. Host keys are accepted on first use into a
    known_hosts file beside the inventory, so each inventory trusts only the hosts it was made for.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    known_hosts = path.with_name(f"{path.stem}.known_hosts")
    known_hosts.touch()
    chunks = ['"""Test hosts for pyinfra (written by tests/hostbench)."""\n']
    for group, hosts in groups.items():
        entries = [
            (
                host.name,
                {
                    "ssh_hostname": host.address,
                    "ssh_user": user,
                    "ssh_key": str(host.ssh_key),
                    "ssh_known_hosts_file": str(known_hosts),
                    **(host_data or {}).get(host.name, {}),
                },
            )
            for host in hosts
        ]
        data = (group_data or {}).get(group)
        value: object = (entries, dict(data)) if data else entries
        chunks.append(f"{group} = {pformat(value, width=100, sort_dicts=False)}\n")
    path.write_text("\n".join(chunks))
    return path
