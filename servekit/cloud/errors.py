"""What went wrong in the cloud, told apart the way the launch loop must react to it.

The classes: capacity errors move the launch to the next availability zone (then the next fallback
instance type); quota errors stop with the Service Quotas code to raise; transient errors retry the
same request (with the same ClientToken); anything else (invalid parameters, permissions) stops at
once.
"""

from __future__ import annotations

from typing import Literal

from botocore.exceptions import ClientError

ErrorClass = Literal["capacity", "quota", "transient", "fatal"]

CAPACITY_CODES = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported", "SpotMaxPriceTooLow"}
)
QUOTA_CODES = frozenset(
    {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded"}
)
TRANSIENT_CODES = frozenset(
    {"RequestLimitExceeded", "InternalError", "Unavailable", "ServiceUnavailable", "ServerInternal"}
)
CREDENTIAL_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "UnrecognizedClientException",
        "RequestExpired",
    }
)

# Service Quotas codes for vCPU limits, by instance family letter and market.
SERVICE_QUOTAS = {
    ("p", False): ("L-417A185B", "Running On-Demand P instances"),
    ("p", True): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("g", False): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("g", True): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
}


class CloudError(Exception):
    """An error `servekit cloud` reports as one message (no traceback)."""


class NoCredentials(CloudError):
    pass


class QuotaExceeded(CloudError):
    pass


class NoCapacity(CloudError):
    pass


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def classify(error: ClientError) -> ErrorClass:
    code = error_code(error)
    if code in CAPACITY_CODES:
        return "capacity"
    if code in QUOTA_CODES:
        return "quota"
    if code in TRANSIENT_CODES:
        return "transient"
    return "fatal"


def quota_message(
    error: ClientError, instance_type: str, count: int, vcpus: int, spot: bool, region: str
) -> str:
    """What to ask AWS for: the quota's name and Service Quotas code, and how many vCPUs."""
    family = instance_type[:1]
    code, name = SERVICE_QUOTAS.get((family, spot), ("", ""))
    needed = count * vcpus
    head = f"AWS refused {instance_type} in {region}: {error_code(error)}: {error_message(error)}"
    if not code:
        return f"{head}\nRaise the vCPU quota for this instance family in Service Quotas."
    return (
        f"{head}\nThe node group needs {needed} vCPUs ({count} × {vcpus}) under the quota "
        f"'{name}' (Service Quotas code {code}), plus what else runs in this account and "
        "region. Ask for more:\n"
        f"  aws service-quotas request-service-quota-increase --service-code ec2 "
        f"--quota-code {code} --desired-value {needed} --region {region}"
    )
