"""What moto 5.2 lacks and servekit calls, added to the moto server the cloud tests start.

Only the gaps listed in shared/reference/cloud.md §5, each kept as small as AWS's documented
behaviour allows. servekit's own code never knows: it sends real requests over HTTP.

- `CreatePlacementGroup` / `DescribePlacementGroups` / `DeletePlacementGroup`: moto raises
  NotImplementedError. Here: an in-memory table per account and region, with tags, the
  `InvalidPlacementGroup.Duplicate` / `.Unknown` errors, and tag/name filters.
- `DescribeCapacityReservations`: absent in moto. Here: reservations a test declares.
- `RunInstances` with a `ClientToken`: moto stores the token but launches again on every call.
  Here: the same token returns the reservation it first made, as AWS does.
- `GetConsoleOutput`: moto returns one fixed kernel log. Here: that log, then the SSH host key
  block cloud-init's `write-ssh-key-fingerprints` prints (github.com/canonical/cloud-init,
  tools/write-ssh-key-fingerprints), with syslog prefixes on the fingerprint lines. Each instance
  gets its own ed25519 key, unless a test sets `CONSOLE["keys"]` (e.g. the test sshd's key);
  `CONSOLE["silent_calls"]` answers that many calls without the block (a machine still booting).
- The Deep Learning Base OSS Nvidia Driver AMI and its public SSM parameter: moto ships
  neither. Here: an image owned by Amazon's DLAMI account and the parameter pointing at it.
"""

from __future__ import annotations

import fnmatch
import itertools
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult, EmptyResult
from moto.core.utils import utcnow
from moto.ec2 import ec2_backends
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.amis import Ami
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses import EC2Response
from moto.ec2.responses.general import SAMPLE_CONSOLE_OUTPUT
from moto.ec2.utils import Base64EncodedString
from moto.ssm import ssm_backends
from moto.ssm.models import Parameter

from servekit.cloud.aws_lookups import DLAMI_OWNER, DLAMI_PARAMETER

DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20251107"
PLACEMENT_GROUPS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
CAPACITY_RESERVATIONS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
CONSOLE: dict[str, Any] = {"keys": None, "silent_calls": 0, "calls": 0}
INSTANCE_KEYS: dict[str, list[str]] = {}
_ids = itertools.count(1)


def reset() -> None:
    PLACEMENT_GROUPS.clear()
    CAPACITY_RESERVATIONS.clear()
    CONSOLE.update(keys=None, silent_calls=0, calls=0)
    INSTANCE_KEYS.clear()


def new_host_key() -> str:
    """A fresh ed25519 public key as `ssh-ed25519 BASE64`."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode()


def console_text(keys: list[str], host: str = "ip-10-0-0-5") -> str:
    """A console as cloud-init leaves it: fingerprints via syslog, then the key block."""
    stamp = "<14>Dec  6 02:00:00 ec2: "
    fingerprints = [f"{stamp}256 SHA256:x root@{host} (ED25519)" for _ in keys]
    return "\r\n".join(
        [
            SAMPLE_CONSOLE_OUTPUT.rstrip("\n"),
            f"{stamp}#############################################################",
            f"{stamp}-----BEGIN SSH HOST KEY FINGERPRINTS-----",
            *fingerprints,
            f"{stamp}-----END SSH HOST KEY FINGERPRINTS-----",
            f"{stamp}#############################################################",
            "-----BEGIN SSH HOST KEY KEYS-----",
            *[f"{key} root@{host}" for key in keys],
            "-----END SSH HOST KEY KEYS-----",
            f"Ubuntu 22.04.5 LTS {host} ttyS0",
            "",
        ]
    )


def get_console_output(self: EC2Response) -> ActionResult:
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    CONSOLE["calls"] += 1
    if CONSOLE["calls"] <= CONSOLE["silent_calls"]:
        text = SAMPLE_CONSOLE_OUTPUT
    else:
        keys = CONSOLE["keys"] or INSTANCE_KEYS.setdefault(instance.id, [new_host_key()])
        text = console_text(list(keys))
    return ActionResult(
        {
            "InstanceId": instance.id,
            "Timestamp": utcnow(),
            "Output": Base64EncodedString.from_raw_string(text),
        }
    )


def _tags(response: EC2Response) -> list[dict[str, str]]:
    specs = response._get_param("TagSpecifications", [])
    return [{"Key": k, "Value": v} for s in specs for k, v in _tag_dict(s).items()]


def _tag_dict(spec: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in spec.get("Tags", [])}


def _matches(item: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
    for name, values in filters.items():
        if name.startswith("tag:"):
            actual = tags.get(name[4:])
        elif name == "group-name":
            actual = item["GroupName"]
        elif name == "strategy":
            actual = item["Strategy"]
        else:
            raise NotImplementedError(f"placement group filter {name}")
        if actual is None or not any(fnmatch.fnmatchcase(actual, v) for v in values):
            return False
    return True


def create_placement_group(self: EC2Response) -> ActionResult:
    groups = PLACEMENT_GROUPS.setdefault((self.current_account, self.region), {})
    name = self._get_param("GroupName")
    if name in groups:
        raise EC2ClientError(
            "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists."
        )
    groups[name] = {
        "GroupName": name,
        "GroupId": f"pg-{next(_ids):017x}",
        "Strategy": self._get_param("Strategy", "cluster"),
        "State": "available",
        "Tags": _tags(self),
    }
    return ActionResult({"PlacementGroup": groups[name]})


def describe_placement_groups(self: EC2Response) -> ActionResult:
    groups = PLACEMENT_GROUPS.get((self.current_account, self.region), {})
    names = self._get_param("GroupNames", [])
    for name in names:
        if name not in groups:
            raise EC2ClientError(
                "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
            )
    filters = self._filters_from_querystring()
    found = [g for n, g in groups.items() if (not names or n in names) and _matches(g, filters)]
    return ActionResult({"PlacementGroups": found})


def delete_placement_group(self: EC2Response) -> ActionResult:
    groups = PLACEMENT_GROUPS.get((self.current_account, self.region), {})
    name = self._get_param("GroupName")
    if name not in groups:
        raise EC2ClientError(
            "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
        )
    del groups[name]
    return EmptyResult()


def describe_capacity_reservations(self: EC2Response) -> ActionResult:
    reservations = CAPACITY_RESERVATIONS.get((self.current_account, self.region), {})
    ids = self._get_param("CapacityReservationIds", [])
    for reservation in ids:
        if reservation not in reservations:
            raise EC2ClientError(
                "InvalidCapacityReservationId.NotFound",
                f"The capacity reservation ID '{reservation}' does not exist",
            )
    found = [r for i, r in reservations.items() if not ids or i in ids]
    return ActionResult({"CapacityReservations": found})


_moto_run_instances = InstanceBackend.run_instances


def run_instances_idempotent(
    self: InstanceBackend, image_id: str, count: int, *args: Any, **kwargs: Any
) -> Any:
    token = kwargs.get("client_token")
    if token and token != "ABCDE":  # moto's placeholder when no token is sent
        for reservation in self.reservations.values():  # type: ignore[attr-defined]
            if any(i.client_token == token for i in reservation.instances):
                return reservation
    return _moto_run_instances(self, image_id, count, *args, **kwargs)


def add_capacity_reservation(
    region: str, reservation: str, instance_type: str, zone: str, capacity_block: bool = False
) -> None:
    CAPACITY_RESERVATIONS.setdefault((DEFAULT_ACCOUNT_ID, region), {})[reservation] = {
        "CapacityReservationId": reservation,
        "InstanceType": instance_type,
        "AvailabilityZone": zone,
        "State": "active",
        "TotalInstanceCount": 4,
        "AvailableInstanceCount": 4,
        "ReservationType": "capacity-block" if capacity_block else "default",
    }


def add_dlami(region: str, with_ssm_parameter: bool = True) -> str:
    """The DLAMI in `region` (owned by Amazon's DLAMI account); its id."""
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    ami_id = "ami-0d1a2b3c4d5e6f708"
    backend.amis[ami_id] = Ami(
        backend,
        ami_id=ami_id,
        name=DLAMI_NAME,
        owner_id=DLAMI_OWNER,
        public=True,
        architecture="x86_64",
        virtualization_type="hvm",
        root_device_type="ebs",
        root_device_name="/dev/sda1",
        region_name=f"{region}a",
    )
    if with_ssm_parameter:
        name = DLAMI_PARAMETER.format(arch="x86_64")
        ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name].append(
            Parameter(
                account_id=DEFAULT_ACCOUNT_ID,
                name=name,
                value=ami_id,
                parameter_type="String",
                description=None,
                allowed_pattern=None,
                keyid=None,
                last_modified_date=datetime.now(UTC),
                version=1,
                data_type="aws:ec2:image",
            )
        )
    return ami_id


def install() -> None:
    """Patch moto's EC2 responses and backend (process-wide: the threaded server uses them)."""
    EC2Response.create_placement_group = create_placement_group  # type: ignore[attr-defined]
    EC2Response.describe_placement_groups = describe_placement_groups  # type: ignore[attr-defined]
    EC2Response.delete_placement_group = delete_placement_group  # type: ignore[attr-defined]
    EC2Response.describe_capacity_reservations = describe_capacity_reservations  # type: ignore[attr-defined]
    InstanceBackend.run_instances = run_instances_idempotent  # type: ignore[method-assign]
    EC2Response.get_console_output = get_console_output  # type: ignore[method-assign]
