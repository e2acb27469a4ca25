"""Carry out a plan: create, change and destroy resources, writing the state after each one.

Order (Terraform's dependency order): adopt and forget records; terminate the instances that go
(destroyed or replaced); per node group the key pair, security group and placement group, then
the instances (with capacity failover: failover.py), their Elastic IPs, and the wait for SSH;
finally the group-level resources that go, in reverse. A crash at any point leaves a state that
lists everything created so far; the next plan adopts what was created but not recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servekit.cloud.aws import AwsProvider
from servekit.cloud.desired import resource_tags
from servekit.cloud.errors import CloudError
from servekit.cloud.failover import NodeLauncher
from servekit.cloud.hostkeys import console_host_keys
from servekit.cloud.plan import SYMBOLS, Change, GroupLaunch, Plan
from servekit.cloud.ssh import SshNotReady, SshTarget
from servekit.cloud.timeouts import Timeouts
from servekit.cloudstate.store import Resource, ResourceType, StateWriter

ProviderFor = Callable[[str], AwsProvider]
ReadyCheck = Callable[[SshTarget, float], object]
Echo = Callable[[str], None]


def needs_elastic_ip(launch: GroupLaunch, instance_type: str) -> bool:
    network = launch.types.get(instance_type) or launch.types[launch.instance_types[0]]
    return network.needs_elastic_ip


class Applier:
    """Carries out one plan against AWS, recording every change in the state as it happens."""

    def __init__(
        self,
        plan: Plan,
        writer: StateWriter,
        provider_for: ProviderFor,
        ready: ReadyCheck | None,
        timeouts: Timeouts | None = None,
        echo: Echo = print,
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.provider_for = provider_for
        self.ready = ready
        self.timeouts = timeouts or Timeouts()
        self.echo = echo

    @property
    def lineage(self) -> str:
        return self.writer.state.lineage

    def changes(self, *actions: str, type_: ResourceType | None = None) -> list[Change]:
        return [
            c
            for c in self.plan.changes
            if c.action in actions and (type_ is None or c.type == type_)
        ]

    def say(self, change: Change | str, what: str) -> None:
        address = change if isinstance(change, str) else change.address
        symbol = "" if isinstance(change, str) else SYMBOLS[change.action] + " "
        self.echo(f"{symbol}{address}: {what}")

    def run(self) -> None:
        for change in self.changes("adopt"):
            self.adopt(change)
        for change in self.changes("create"):
            if self.writer.state.find(change.type, change.name):  # recorded, but gone from AWS
                self.writer.forget(change.type, change.name)
                if change.type == "aws_instance":
                    self.writer.bump_generation(change.name)  # its ClientToken is spent
        self.terminate(self.changes("destroy", "replace", type_="aws_instance"))
        for launch in self.plan.groups:
            self.converge(launch)
        last: tuple[ResourceType, ...] = (
            "aws_eip",
            "aws_security_group",
            "aws_placement_group",
            "aws_key_pair",
        )
        for type_ in last:
            for change in self.changes("destroy", type_=type_):
                self.delete(change)

    # Records ----------------------------------------------------------------------------------

    def adopt(self, change: Change) -> None:
        assert change.id is not None
        attributes: dict[str, Any] = {**change.attributes, "group": change.group}
        if change.type in ("aws_instance", "aws_key_pair") and self.plan.groups:
            launch = self.plan.group(change.group)
            attributes["public_key_sha256"] = launch.public_key_sha256
        if change.type == "aws_instance":
            attributes["ssh_ready"] = False
        self.writer.record(
            Resource(
                type=change.type,
                name=change.name,
                id=change.id,
                region=change.region,
                attributes=attributes,
            )
        )
        self.say(change, f"adopted {change.id}")

    # Group-level resources --------------------------------------------------------------------

    def group_change(self, launch: GroupLaunch, type_: ResourceType) -> Change | None:
        return next(
            (
                c
                for c in self.plan.changes
                if c.type == type_ and c.name == launch.group and c.action != "destroy"
            ),
            None,
        )

    def converge(self, launch: GroupLaunch) -> None:
        provider = self.provider_for(launch.region)
        tags = resource_tags(self.plan.fleet, launch.group, self.lineage)
        if (change := self.group_change(launch, "aws_key_pair")) is not None:
            if change.action == "replace":
                self.delete(change)
            if change.action in ("create", "replace"):
                key_id = provider.import_key_pair(launch.resource_name, launch.public_key, tags)
                sha256 = launch.public_key_sha256
                self.record(
                    change, launch.resource_name, key_pair_id=key_id, public_key_sha256=sha256
                )
                self.say(change, f"imported {launch.resource_name}")
        if (change := self.group_change(launch, "aws_security_group")) is not None:
            if change.action == "replace":
                self.delete(change)
            record = self.writer.state.find("aws_security_group", launch.group)
            if record is None:
                group_id = provider.create_security_group(launch.resource_name, launch.vpc_id, tags)
                record = self.record(change, group_id, vpc_id=launch.vpc_id, ssh_cidrs=[])
                self.say(change, f"created {group_id}")
            self.set_rules(provider, launch, record)
        if (change := self.group_change(launch, "aws_placement_group")) is not None:
            if change.action == "replace":
                self.delete(change)
            if change.action in ("create", "replace"):
                provider.create_placement_group(launch.resource_name, tags)
                self.record(change, launch.resource_name, strategy="cluster")
                self.say(change, f"created {launch.resource_name} (cluster)")
        self.converge_nodes(provider, launch)

    def record(self, change: Change, id_: str, **attributes: Any) -> Resource:
        return self.writer.record(
            Resource(
                type=change.type,
                name=change.name,
                id=id_,
                region=change.region,
                attributes={"group": change.group, **attributes},
            )
        )

    def set_rules(self, provider: AwsProvider, launch: GroupLaunch, record: Resource) -> None:
        provider.allow_members(record.id)
        (live,) = provider.lookup("aws_security_group", [record.id])
        current = set(live.attributes["ssh_cidrs"])
        wanted = set(launch.ssh_cidrs)
        provider.set_ssh_cidrs(
            record.id, add=sorted(wanted - current), remove=sorted(current - wanted)
        )
        self.writer.update(record, ssh_cidrs=sorted(wanted))
        self.say(f"aws_security_group.{launch.group}", f"SSH from {', '.join(sorted(wanted))}")

    # Instances --------------------------------------------------------------------------------

    def converge_nodes(self, provider: AwsProvider, launch: GroupLaunch) -> None:
        touched = [
            c for c in self.plan.changes if c.group == launch.group and c.action != "destroy"
        ]
        nodes = [n for n in launch.nodes if any(c.name == n for c in touched)]
        to_launch = [
            n
            for n in nodes
            if any(
                c.name == n and c.type == "aws_instance" and c.action in ("create", "replace")
                for c in touched
            )
        ]
        if to_launch:
            launcher = NodeLauncher(self.plan.fleet, self.writer, self.timeouts, self.echo)
            launcher.launch_nodes(provider, launch, to_launch)
        records = [r for n in nodes if (r := self.writer.state.find("aws_instance", n))]
        self.start_stopped(provider, records)
        running = provider.wait_running(
            [r.id for r in records], self.timeouts.running_s, self.timeouts.poll_s
        )
        for found in running:
            record = next(r for r in records if r.id == found.id)
            record = self.writer.update(
                record,
                public_ip=found.attributes["public_ip"],
                private_ip=found.attributes["private_ip"],
                primary_interface=found.attributes["primary_interface"],
                availability_zone=found.attributes["availability_zone"],
                instance_type=found.attributes["instance_type"],
            )
            if needs_elastic_ip(launch, str(found.attributes["instance_type"])):
                record = self.ensure_elastic_ip(provider, launch, record)
            where = record.attributes
            self.say(
                f"aws_instance.{record.name}",
                f"{record.id} running in {where['availability_zone']}, "
                f"public {where['public_ip']}, private {where['private_ip']}",
            )
        for node in nodes:
            instance = self.writer.state.find("aws_instance", node)
            if instance is not None and instance.attributes.get("ssh_ready") is not True:
                self.wait_for_ssh(launch, instance)

    def start_stopped(self, provider: AwsProvider, records: list[Resource]) -> None:
        found = provider.lookup("aws_instance", [r.id for r in records])
        stopping = [f.id for f in found if f.status == "stopping"]
        provider.wait_stopped(stopping, self.timeouts.running_s, self.timeouts.poll_s)
        stopped = [f.id for f in found if f.status in ("stopped", "stopping")]
        if stopped:
            provider.start_instances(stopped)
            self.echo(f"started {', '.join(stopped)}")

    def ensure_elastic_ip(
        self, provider: AwsProvider, launch: GroupLaunch, instance: Resource
    ) -> Resource:
        """Several network interfaces: the node's public address is an Elastic IP."""
        node = instance.name
        record = self.writer.state.find("aws_eip", node)
        if record is None:
            index = launch.nodes.index(node)
            tags = resource_tags(self.plan.fleet, launch.group, self.lineage, node, index)
            allocation, address = provider.allocate_address(tags)
            record = self.writer.record(
                Resource(
                    type="aws_eip",
                    name=node,
                    id=allocation,
                    region=launch.region,
                    attributes={"group": launch.group, "public_ip": address},
                )
            )
            self.say(f"aws_eip.{node}", f"allocated {allocation} ({address})")
        interface = instance.attributes.get("primary_interface")
        if record.attributes.get("network_interface_id") != interface:
            provider.associate_address(record.id, str(interface))
            record = self.writer.update(record, network_interface_id=interface)
            self.say(f"aws_eip.{node}", f"associated with {instance.id}")
        return self.writer.update(instance, public_ip=record.attributes["public_ip"])

    def wait_for_ssh(self, launch: GroupLaunch, record: Resource) -> None:
        """Pin the host keys from the console, then log in accepting only those (hostkeys.py)."""
        if self.ready is None:
            self.writer.update(record, ssh_ready=None)
            return
        host = record.attributes.get("public_ip") or record.attributes.get("private_ip")
        if not host:
            raise CloudError(f"{record.name} ({record.id}) has no address to reach over SSH")
        started = time.monotonic()
        address = f"aws_instance.{record.name}"
        self.say(address, "waiting for its SSH host keys in the console output")
        try:
            keys = self.console_host_keys(launch.region, record)
            record = self.writer.update(record, host_keys=keys)
            self.say(address, f"host keys pinned: {', '.join(k.split()[0] for k in keys)}")
            target = SshTarget(
                node=record.name,
                host=str(host),
                user=launch.ssh_user,
                key=Path(launch.ssh_key),
                host_keys=tuple(keys),
            )
            self.say(address, f"waiting for SSH at {target.host}")
            left = max(1.0, self.timeouts.ssh_s - (time.monotonic() - started))
            self.ready(target, left)
        except CloudError:
            self.writer.update(record, ssh_ready=False)
            raise
        self.writer.update(record, ssh_ready=True)
        self.say(address, "SSH login works")

    def console_host_keys(self, region: str, record: Resource) -> list[str]:
        """The host keys cloud-init printed to the instance's console, waited for (bounded)."""
        provider = self.provider_for(region)
        deadline = time.monotonic() + self.timeouts.ssh_s
        while True:
            keys = console_host_keys(provider.console_output(record.id))
            if keys:
                return keys
            if time.monotonic() + self.timeouts.poll_s > deadline:
                found = "an empty key block" if keys == [] else "no key block"
                raise SshNotReady(
                    f"{record.name} ({record.id}): its console output shows {found} within "
                    f"{self.timeouts.ssh_s:.0f} s, so its SSH host key cannot be verified; "
                    "servekit does not trust an unverified key. The AMI must run cloud-init with "
                    "ssh.emit_keys_to_console (the default); check `aws ec2 get-console-output "
                    f"--latest --instance-id {record.id}`, then `servekit cloud apply` again"
                )
            time.sleep(self.timeouts.poll_s)

    # Destroying -------------------------------------------------------------------------------

    def terminate(self, changes: list[Change]) -> None:
        by_region: dict[str, list[Change]] = {}
        for change in changes:
            record = self.writer.state.find("aws_instance", change.name)
            region = record.region if record and record.id == change.id else change.region
            by_region.setdefault(region, []).append(change)
        for region, batch in by_region.items():
            provider = self.provider_for(region)
            live = {f.id for f in provider.lookup("aws_instance", [str(c.id) for c in batch])}
            ids = [str(c.id) for c in batch if c.id in live]
            if ids:
                provider.terminate_instances(ids)
                self.echo(f"terminating {', '.join(ids)}")
                provider.wait_terminated(ids, self.timeouts.terminated_s, self.timeouts.poll_s)
            for change in batch:
                record = self.writer.state.find("aws_instance", change.name)
                if record is not None and record.id == change.id:
                    self.writer.forget("aws_instance", change.name)
                self.writer.bump_generation(change.name)
                self.say(change, f"terminated {change.id}")

    def delete(self, change: Change) -> None:
        """Delete one group-level resource or Elastic IP, and forget it."""
        record = self.writer.state.find(change.type, change.name)
        region = record.region if record is not None and record.id == change.id else change.region
        provider = self.provider_for(region)
        resource_id = str(change.id)
        timeout, poll = self.timeouts.delete_s, self.timeouts.poll_s
        match change.type:
            case "aws_eip":
                provider.release_address(resource_id, timeout, poll)
            case "aws_security_group":
                provider.delete_security_group(resource_id, timeout, poll)
            case "aws_placement_group":
                provider.delete_placement_group(resource_id, timeout, poll)
            case "aws_key_pair":
                provider.delete_key_pair(resource_id)
            case "aws_instance":
                raise AssertionError("instances go through terminate()")
        if record is not None and record.id == change.id:
            self.writer.forget(change.type, change.name)
        self.echo(f"- {change.address}: deleted {resource_id}")
