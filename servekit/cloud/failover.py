"""Launch a node group's instances together in one zone, with capacity failover.

Each `RunInstances` goes out once (no botocore retry). A capacity error moves the whole group to
the next candidate (zone, then fallback type), after terminating what it had launched in the
failed zone, so a multi-node group lands in one zone; a quota error stops with the Service Quotas
code; an invalid request stops at once; a transient error or a lost reply retries the same
request, with the same ClientToken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from servekit.cloud.aws import AwsProvider
from servekit.cloud.desired import resource_tags
from servekit.cloud.errors import (
    CloudError,
    NoCapacity,
    QuotaExceeded,
    classify,
    error_code,
    error_message,
    quota_message,
)
from servekit.cloud.found import Found
from servekit.cloud.launch import client_token, run_request
from servekit.cloud.plan import Candidate, GroupLaunch
from servekit.cloud.timeouts import Timeouts
from servekit.cloudstate.store import Resource, StateWriter

Echo = Callable[[str], None]
LAUNCH_TRIES = 3


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class NodeLauncher:
    """Launches nodes of one fleet, recording each instance in the state as soon as it exists."""

    def __init__(self, fleet: str, writer: StateWriter, timeouts: Timeouts, echo: Echo) -> None:
        self.fleet = fleet
        self.writer = writer
        self.timeouts = timeouts
        self.echo = echo

    def launch_nodes(self, provider: AwsProvider, launch: GroupLaunch, nodes: list[str]) -> None:
        """Launch `nodes` together in one zone, trying candidates in order (see module doc)."""
        staying = [
            r
            for r in self.writer.state.of_type("aws_instance")
            if r.attributes.get("group") == launch.group and r.name not in nodes
        ]
        candidates = launch.candidates
        if staying:  # join the nodes that run: same zone, same instance type
            zone = str(staying[0].attributes["availability_zone"])
            kind = str(staying[0].attributes["instance_type"])
            subnet = str(staying[0].attributes.get("subnet_id") or "")
            candidates = [c for c in candidates if c.zone == zone and c.instance_type == kind] or [
                Candidate(instance_type=kind, zone=zone, subnet_id=subnet)
            ]
        tried: list[str] = []
        for candidate in candidates:
            launched: list[Resource] = []
            try:
                for node in nodes:
                    launched.append(self.launch_node(provider, launch, node, candidate))
                return
            except ClientError as error:
                kind = classify(error)
                if kind == "capacity":
                    where = f"{candidate.instance_type} in {candidate.zone}"
                    tried.append(f"{where} ({error_code(error)})")
                    self.echo(f"  no capacity for {where} ({error_code(error)}); next candidate")
                    self.roll_back(provider, launched)
                    continue
                if kind == "quota":
                    needed = (len(launch.nodes), launch.types[candidate.instance_type].vcpus)
                    message = quota_message(
                        error, candidate.instance_type, *needed, launch.spot, launch.region
                    )
                    raise QuotaExceeded(message) from None
                raise CloudError(
                    f"launching {candidate.instance_type} in {candidate.zone} failed: "
                    f"{error_code(error)}: {error_message(error)}"
                ) from None
        raise NoCapacity(
            f"no capacity for {len(nodes)} × {launch.group} in {launch.region}; tried "
            + "; ".join(tried)
            + ". Try later, or declare more availability_zones, fallback_instance_types, "
            "or a capacity reservation"
        )

    def launch_node(
        self, provider: AwsProvider, launch: GroupLaunch, node: str, candidate: Candidate
    ) -> Resource:
        state = self.writer.state
        generation = state.generations.get(node, 0)
        token = client_token(
            state.lineage, node, generation, candidate.instance_type, candidate.zone
        )
        index = launch.nodes.index(node)
        tags = resource_tags(self.fleet, launch.group, state.lineage, node, index)
        security_group = state.find("aws_security_group", launch.group)
        assert security_group is not None, "the security group is created before instances"
        request = run_request(launch, candidate, security_group.id, token, tags)
        found = self.run_instance(provider, request, node)
        record = self.writer.record(
            Resource(
                type="aws_instance",
                name=node,
                id=found.id,
                region=launch.region,
                attributes={
                    **found.attributes,
                    "group": launch.group,
                    "node_index": index,
                    "subnet_id": candidate.subnet_id,
                    "public_key_sha256": launch.public_key_sha256,
                    "root_volume_gib": launch.root_volume_gib,
                    "placement_group": launch.resource_name if launch.placement_group else None,
                    "spot": launch.spot,
                    "ssh_user": launch.ssh_user,
                    "ssh_key": launch.ssh_key,
                    "ssh_ready": False,
                    "client_token": token,
                    "launched_at": _now(),
                },
            )
        )
        self.echo(
            f"aws_instance.{node}: launched {found.id} ({candidate.instance_type} in "
            f"{candidate.zone})"
        )
        return record

    def run_instance(self, provider: AwsProvider, request: Any, node: str) -> Found:
        """Send the launch; resend the same request (same token) on transient failures."""
        for attempt in range(1, LAUNCH_TRIES + 1):
            try:
                return provider.run_instance(request)
            except ClientError as error:
                if classify(error) != "transient" or attempt == LAUNCH_TRIES:
                    raise
                problem = error_code(error)
            except (BotoConnectionError, HTTPClientError) as error:
                if attempt == LAUNCH_TRIES:
                    raise CloudError(
                        f"launching {node}: no answer from AWS ({error}); the next apply adopts "
                        "the instance if it was created"
                    ) from None
                problem = type(error).__name__
            self.echo(f"  {node}: {problem}; sending the same launch again")
            time.sleep(self.timeouts.poll_s * attempt)
        raise AssertionError("unreachable")

    def roll_back(self, provider: AwsProvider, launched: list[Resource]) -> None:
        """Terminate what a failed zone got, so the group lands in one zone."""
        if not launched:
            return
        ids = [r.id for r in launched]
        provider.terminate_instances(ids)
        provider.wait_terminated(ids, self.timeouts.terminated_s, self.timeouts.poll_s)
        for record in launched:
            self.writer.forget("aws_instance", record.name)
            self.writer.bump_generation(record.name)
            self.echo(f"aws_instance.{record.name}: terminated {record.id} (zone given up)")
