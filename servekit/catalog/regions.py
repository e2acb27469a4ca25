"""Which AWS regions and availability zones an `AwsNodeGroup` may name, known offline (a catalog:
the schema reads it, so it lives below both the schema and `servekit.cloud`).

The regions come from botocore's bundled endpoint data (`Session.get_available_regions("ec2")`
per partition), so a typo such as `us-east1` is refused when the inventory loads, with the valid
names, instead of failing later inside an AWS call. boto3 is imported only when a fleet has an
AWS node group, so loading an inventory without one stays fast.

Zones are given by name (`us-east-1a`, Local Zones `us-east-1-bos-1a`) or by zone ID
(`use1-az4`, resolved against the account at plan time). A zone name is the region's name
followed by a letter, or by `-` for Local and Wavelength Zones: Local Zone `us-east-1-bos-1a`
has the ID `use1-bos1-az1` (docs.aws.amazon.com/local-zones/latest/ug/available-local-zones.html);
Wavelength zone groups look like `us-east-1-wl1-bos-wlz-1` (EC2 API, AvailabilityZone.GroupName).
"""

from __future__ import annotations

import difflib
import functools
import re

# A zone ID: the region's short code, then `-az<N>` (`use1-az4`, Local Zone `use1-bos1-az1`).
ZONE_ID = re.compile(r"^[a-z]{2,}[0-9]+(-[a-z0-9]+)*-az[0-9]+$")
SHOWN_REGIONS = 40


@functools.cache
def ec2_regions() -> dict[str, str]:
    """Every region botocore knows EC2 endpoints for → its partition (`aws`, `aws-cn`, ...)."""
    import boto3

    session = boto3.session.Session()
    regions: dict[str, str] = {}
    for partition in session.get_available_partitions():
        for region in session.get_available_regions("ec2", partition_name=partition):
            regions[region] = partition
    return regions


def region_problem(region: str) -> tuple[str, str] | None:
    """(message, fix) when `region` is not an EC2 region; None when it is."""
    regions = ec2_regions()
    if region in regions:
        return None
    commercial = sorted(r for r, p in regions.items() if p == "aws")
    others = len(regions) - len(commercial)
    close = difflib.get_close_matches(region, list(regions), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    shown = ", ".join(commercial[:SHOWN_REGIONS])
    return (
        f"unknown AWS region {region!r}",
        f"{hint}use an EC2 region: {shown} (and {others} in the China, GovCloud and other "
        "partitions)",
    )


def zone_region(zone: str) -> str | None:
    """The region a zone name belongs to (longest known region it starts with), if any."""
    owners = [r for r in ec2_regions() if zone.startswith(r) and _zone_suffix(zone[len(r) :])]
    return max(owners, key=len) if owners else None


def _zone_suffix(rest: str) -> bool:
    # A region's zones are lettered from `a`; the largest region, us-east-1, has six (a to f:
    # docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-regions-availability-zones.html), so a
    # later letter is a typo. Local and Wavelength Zones follow a `-`.
    return re.fullmatch(r"[a-f]|-[a-z0-9-]+[a-z0-9]", rest) is not None


def zone_problem(region: str, zone: str) -> tuple[str, str] | None:
    """(message, fix) when `zone` cannot be a zone of `region`; None when it can."""
    if ZONE_ID.match(zone):
        return None  # an ID names its region by a short code: checked against AWS at plan time
    owner = zone_region(zone)
    if owner == region:
        return None
    if owner is None:
        message = f"{zone!r} is not an availability zone name or zone ID"
    else:
        message = f"availability zone {zone!r} is in {owner}, not in the group's region {region}"
    return message, f"name zones of {region}, e.g. {region}a, or zone IDs such as use1-az4"
