"""The gateway run for real on loopback, as tests and benchmarks need it: a host plan whose
gateway has the given routes, and HAProxy's runtime API (the admin socket the config names)."""

from __future__ import annotations

import csv
import socket
from collections.abc import Iterable

from servekit.hostplan import GatewayHost, GatewayMember, HostPlan, Route
from servekit.placement import plan_fleet
from servekit.spec import Fleet, Gateway, SecretRef, SshHost


def loopback_plan(
    routes: list[Route], port: int, members: Iterable[GatewayMember] = ()
) -> HostPlan:
    """The plan of a gateway host on 127.0.0.1 whose gateway has these routes (and members)."""
    fleet = Fleet(
        name="gwtest",
        machines=[SshHost(name="gw", address="127.0.0.1")],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
    )
    plan = plan_fleet(fleet).hosts["gw"]
    assert plan.gateway is not None
    update = {"routes": routes, "port": port, "members": list(members)}
    gateway = GatewayHost(**{**plan.gateway.model_dump(), **update})
    return plan.model_copy(update={"gateway": gateway})


def runtime(socket_path: str, command: str) -> str:
    """One command on HAProxy's runtime API socket, and its whole answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def servers(socket_path: str) -> dict[str, dict[str, str]]:
    """`backend/server` -> its `show stat` row (by column name), servers only."""
    return parse_show_stat(runtime(socket_path, "show stat"))


def parse_show_stat(text: str) -> dict[str, dict[str, str]]:
    """`backend/server` -> its row (by column name) of a `show stat` answer, servers only."""
    rows = csv.reader(text.removeprefix("# ").splitlines())
    header = next(rows)
    return {
        f"{row[0]}/{row[1]}": dict(zip(header, row, strict=False))
        for row in rows
        if row and row[1] not in ("FRONTEND", "BACKEND")
    }
