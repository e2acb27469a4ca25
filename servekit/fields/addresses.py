"""Host addresses: an IP address or a host name, nothing that could become two."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

from servekit.errors import invalid
from servekit.fields.text import check_text

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def is_hostname(value: str) -> bool:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner '-' (1-63 chars,
    253 in all); the last label is not all digits (RFC 3696 2: a top-level domain never is), so
    '10.0.0.999' is not taken for a name."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def check_address(value: str) -> str:
    """An IPv4/IPv6 literal or an RFC 1123 host name: no port, CIDR, list, zone or space."""
    check_text(value)
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if is_hostname(value):
            return value
        raise invalid(
            f"{value!r} is neither an IP address nor a host name",
            "give one address such as '10.0.0.5', 'fd00::5' or 'gpu1.example.com' "
            "(no port, CIDR, list or spaces; the SSH port goes in ssh_port)",
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise invalid(
            f"{value!r} carries an IPv6 zone (%...)",
            "give a global or unique-local IPv6 address without '%zone'",
        )
    return str(ip)


Address = Annotated[str, AfterValidator(check_address)]
