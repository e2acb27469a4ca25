"""An instance's SSH host keys, read from its console output (boto3-free; the keys it finds are
pinned in the fleet's state and known_hosts file).

On first boot cloud-init prints the machine's public host keys to the serial console between
`-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----` (its helper
`tools/write-ssh-key-fingerprints` in github.com/canonical/cloud-init, run by the
`cc_keys_to_console` module, through `logger`, so lines may carry a syslog prefix such as
`<14>Jun  3 17:07:52 ec2: `). EC2's `GetConsoleOutput` returns that console (base64, decoded by
botocore). The console is written by the hypervisor, not over the network, so a key read there
identifies the machine: the SSH readiness check then accepts only a server presenting one of
them, and the keys are written to a known_hosts file that pyinfra checks strictly
(servekit/cloudstate/known_hosts.py).
"""

from __future__ import annotations

import base64
import binascii
import re

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
# OpenSSH host key types cloud-init may print; ed25519 first: paramiko asks the server for the
# type of the first pinned key (paramiko/client.py, SSHClient.connect).
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_SYSLOG_PREFIX = re.compile(r"^<\d+>.*?: ")
_TYPES = "|".join(map(re.escape, KEY_TYPES))
_KEY = re.compile(r"(?:^|\s)(" + _TYPES + r")\s+([A-Za-z0-9+/]+={0,2})")


def console_host_keys(console: str) -> list[str] | None:
    """The `TYPE BASE64` host keys in the last complete key block; None while there is none.

    A key whose blob does not decode, or does not say its own type inside (as every OpenSSH
    public key blob does), is skipped: a wrapped or garbled line is never pinned.
    """
    text = console.replace("\r\n", "\n")
    end = text.rfind(END)
    begin = text.rfind(BEGIN, 0, end) if end >= 0 else -1
    if begin < 0:
        return None
    block = "\n".join(
        _SYSLOG_PREFIX.sub("", line) for line in text[begin + len(BEGIN) : end].split("\n")
    )
    keys: list[str] = []
    for key_type, blob in _KEY.findall(block):
        if _valid(key_type, blob) and f"{key_type} {blob}" not in keys:
            keys.append(f"{key_type} {blob}")
    return sorted(keys, key=lambda k: KEY_TYPES.index(k.split()[0]))


def _valid(key_type: str, blob: str) -> bool:
    """A whole public key of the type the line says; a line cut short by a wrap is not.

    An OpenSSH public key blob is a run of length-prefixed strings (RFC 4253 §6.6: the type
    name, then the key's parts; RFC 8709 §4: an ed25519 key is 32 bytes), which a whole blob
    fills exactly; paramiko must then load it.
    """
    import paramiko  # imported here: the state module (and so inventories) import this one

    fields = _wire_strings(blob)
    if not fields or fields[0] != key_type.encode():
        return False
    if key_type == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32):
        return False
    try:
        paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    except Exception:  # paramiko raises several kinds for a malformed key
        return False
    return True


def _wire_strings(blob: str) -> list[bytes] | None:
    """The blob's length-prefixed strings, or None unless they fill it exactly."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    fields, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            return None
        size = int.from_bytes(raw[at : at + 4], "big")
        if at + 4 + size > len(raw):
            return None
        fields.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return fields
