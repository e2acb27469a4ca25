"""URLs of mirrors, model references, and EC2 resource ids."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator

from servekit.errors import invalid
from servekit.fields.addresses import is_hostname
from servekit.fields.text import check_text

# RFC 3986 characters, less those a shell, a quoted string or an apt sources line gives a meaning
# to ($ ' ( ) ; ! ` " space \ and controls): a mirror URL never needs them.
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@&+,=%*]+$")


def check_url(value: str) -> str:
    """An http(s) URL with a host and no login: mirrors and endpoints."""
    check_text(value)
    authority = value.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:  # checked first: no other message may echo a password
        raise invalid(
            "the URL carries a login (user:password@), which would land in commands and logs",
            "remove it and put the login in Sources(mirror_credentials=SecretRef(file=...)) "
            "(a netrc file)",
        )
    if not _URL_CHARS.fullmatch(value):
        raise invalid(
            f"{value!r} contains characters a URL does not need (space, quote, $, ;, ...)",
            "percent-encode them, or give the mirror's plain URL",
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise invalid(
            f"{value!r} is not an http(s) URL", "give a URL starting with https:// (or http://)"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise invalid(
            "the URL carries a login (user:password@), which would land in commands and logs",
            "remove it and put the login in Sources(mirror_credentials=SecretRef(file=...)) "
            "(a netrc file)",
        )
    try:
        port = parts.port
        host = parts.hostname
    except ValueError:
        host, port = None, None
    if not host:
        raise invalid(f"{value!r} has no valid host", "give a URL such as https://mirror.example")
    if not is_hostname(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise invalid(
                f"{host!r} is not a host name or IP address",
                "give a URL such as https://mirror.example",
            ) from None
    del port
    return value


Url = Annotated[str, AfterValidator(check_url)]


# Model names a client sends (`served_names`) and model references (`Serve.model`: a catalog name,
# a Hugging Face id `org/name`, an Ollama tag `name:tag` or `hf.co/org/repo:quant`, or an absolute
# local path). Printable ASCII without spaces, quotes or shell characters: they reach vLLM's
# config, Ollama's pull API, commands and the gateway's routes.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_/.][A-Za-z0-9._:/@+=-]{0,199}$", re.ASCII)


def check_model_name(value: str) -> str:
    check_text(value)
    if not _MODEL_NAME.match(value) or ".." in value.split("/"):
        raise invalid(
            f"{value!r} is not a model name (letters, digits and . _ : / @ + = - only)",
            "use a catalog name, a Hugging Face id ('org/name'), an Ollama tag ('llama3.1:8b') "
            "or an absolute path without spaces",
        )
    return value


ModelName = Annotated[str, AfterValidator(check_model_name)]


def _ec2_id(prefix: str) -> Any:
    pattern = re.compile(rf"^{prefix}-([0-9a-f]{{8}}|[0-9a-f]{{17}})$", re.ASCII)

    def check(value: str) -> str:
        if not pattern.match(value):
            raise invalid(
                f"{value!r} is not an EC2 {prefix} id",
                f"give the id as AWS shows it: '{prefix}-' and 8 or 17 hex digits, e.g. "
                f"'{prefix}-0123456789abcdef0'",
            )
        return value

    return Annotated[str, AfterValidator(check)]


# EC2 resource ids: a prefix and 8 or 17 lower-case hex digits (EC2 API reference, "Resource IDs":
# docs.aws.amazon.com/AWSEC2/latest/UserGuide/resource-ids.html).
ReservationId = _ec2_id("cr")
SubnetId = _ec2_id("subnet")
