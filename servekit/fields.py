"""Typed fields of the fleet schema: every value that reaches a shell, a path, a unit, nftables, apt
or a URL has a type here, checked when the inventory loads.

Each type refuses by construction what could change the meaning of the place it lands in (a
newline that starts a new unit directive, a comma that adds an nftables element, `$(...)` inside a
shell string, `..` in a path): the value is checked against the scheme it belongs to, not against
a list of known attacks. Errors carry their fix (`invalid(message, fix)`), so the Problem a user
sees says what to write instead.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator

from servekit.errors import invalid

# C0 controls, DEL, C1 controls (U+0085 NEL among them) and the Unicode line/paragraph separators:
# each can end a line for some reader (systemd, a shell, Python's splitlines, a YAML parser).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(value: str) -> str | None:
    """The first control character in `value`, spelled out (None when there is none)."""
    found = _CONTROL.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_text(value: str) -> str:
    """Free text: anything printable on one line."""
    bad = control_character(value)
    if bad is not None:
        raise invalid(
            f"contains the control character {bad} (a newline or similar)",
            "write the value on one line, without control characters",
        )
    return value


Text = Annotated[str, AfterValidator(check_text)]

# --- addresses -----------------------------------------------------------------------------------

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

# --- versions and durations -----------------------------------------------------------------------

# Ollama's release tags are vX.Y.Z and vX.Y.Z-rcN (github.com/ollama/ollama/releases/tag/v0.12.3;
# release candidates such as 0.4.0-rc8: github.com/ollama/ollama/issues/7507). servekit pins the
# version without the 'v'.
_OLLAMA_VERSION = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}(-rc\d{1,3})?$", re.ASCII)


def check_ollama_version(value: str) -> str:
    if not _OLLAMA_VERSION.fullmatch(value):
        raise invalid(
            f"{value!r} is not an Ollama release version",
            "pin a release as X.Y.Z or X.Y.Z-rcN (e.g. '0.12.3', without the 'v')",
        )
    return value


OllamaVersion = Annotated[str, AfterValidator(check_ollama_version)]

# OLLAMA_KEEP_ALIVE: Go's time.ParseDuration, else an integer number of seconds; negative keeps a
# model loaded forever (envconfig.KeepAlive in github.com/ollama/ollama, envconfig/config.go).
# Go durations: an optional sign, then decimal numbers each with a unit ns/us/µs/ms/s/m/h, or "0".
_GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$", re.ASCII)
_SECONDS = re.compile(r"^[-+]?\d{1,18}$", re.ASCII)


def check_keep_alive(value: str) -> str:
    if not (_GO_DURATION.fullmatch(value) or _SECONDS.fullmatch(value)):
        raise invalid(
            f"{value!r} is not a duration Ollama reads",
            "use a Go duration such as '5m', '1h30m' or '0', or whole seconds ('-1': forever)",
        )
    return value


KeepAlive = Annotated[str, AfterValidator(check_keep_alive)]

# Prometheus durations (prometheus/common model/time.go, durationRE and ParseDuration): units
# y w d h m s ms in this order, each at most once, or "0" (refused here: an interval above zero).
_PROM_DURATION = re.compile(
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)


def check_prometheus_duration(value: str) -> str:
    if (
        not value
        or value == "0"
        or not _PROM_DURATION.fullmatch(value)
        or not any(c.isdigit() and c != "0" for c in value)
    ):
        raise invalid(
            f"{value!r} is not a Prometheus duration above zero",
            "use units y w d h m s ms in that order, e.g. '15s', '1m30s', '15d'",
        )
    return value


PrometheusDuration = Annotated[str, AfterValidator(check_prometheus_duration)]

# --- names ----------------------------------------------------------------------------------------

# A Hugging Face revision is a branch, a tag or a commit: git ref-name rules (git-check-ref-format:
# no '..', no space, ~^:?*[\\, no leading '-' or '/', no '//', no trailing '/' '.' or '.lock').
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}$")


def check_revision(value: str) -> str:
    if (
        not _REVISION.fullmatch(value)
        or ".." in value
        or "//" in value
        or "/." in value
        or value.endswith(("/", ".", ".lock"))
    ):
        raise invalid(
            f"{value!r} is not a branch, tag or commit name",
            "give a commit hash (e.g. '0e9e39f249a16976918f6564b8830bc894c89659') or a plain "
            "branch/tag name: letters, digits, '.', '_', '-', '/' (no '..', spaces or quotes)",
        )
    return value


Revision = Annotated[str, AfterValidator(check_revision)]

# User names as Debian's adduser.conf checks them (NAME_REGEX="^[a-z][-a-z0-9_]*\$?$", and
# SYS_NAME_REGEX allows a leading '_'), at most 32 characters, without the trailing '$' (a shell
# character): what `ssh -l` and sudo take as one word.
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_user(value: str) -> str:
    if not _USER.fullmatch(value):
        raise invalid(
            f"{value!r} is not a user name",
            "use a POSIX user name: lower-case letters, digits, '_' and '-' (e.g. 'ubuntu')",
        )
    return value


UserName = Annotated[str, AfterValidator(check_user)]

_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(value: str) -> str:
    if not _ENV.fullmatch(value):
        raise invalid(
            f"{value!r} is not an environment variable name",
            "use letters, digits and '_', not starting with a digit (e.g. 'SERVEKIT_KEY')",
        )
    return value


EnvName = Annotated[str, AfterValidator(check_env_name)]

# S3 bucket naming rules: docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket(value: str) -> str:
    ip_like = re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value, re.ASCII) is not None
    if not _BUCKET.fullmatch(value) or ".." in value or ip_like or value.startswith("xn--"):
        raise invalid(
            f"{value!r} is not an S3 bucket name",
            "3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or "
            "digit, no '..', not an IP address (the path inside the bucket goes in prefix)",
        )
    return value


BucketName = Annotated[str, AfterValidator(check_bucket)]


def check_key_prefix(value: str) -> str:
    """An object key prefix: relative, no '.' or '..' segment, no backslash, no control chars."""
    check_text(value)
    segments = value.split("/")
    if value.startswith("/") or "\\" in value or any(s in (".", "..") for s in segments):
        raise invalid(
            f"prefix {value!r} could point outside the checkpoint directory",
            "give a plain key prefix such as 'models/' (no leading '/', no '.' or '..' parts)",
        )
    if not _KEY_PREFIX.match(value):
        raise invalid(
            f"prefix {value!r} has characters outside S3's safe set",
            "use letters, digits and ! - _ . * ( ) / (S3's safe characters for object keys)",
        )
    return value


# S3's "safe characters" for object key names, less the single quote (docs.aws.amazon.com/
# AmazonS3/latest/userguide/object-keys.html): nothing that needs quoting or URL encoding.
_KEY_PREFIX = re.compile(r"^[0-9A-Za-z!_.*()/-]*$", re.ASCII)

KeyPrefix = Annotated[str, AfterValidator(check_key_prefix)]

_REGION = re.compile(r"^[a-z0-9]+(-[a-z0-9]+){0,5}$")


def check_region(value: str) -> str:
    if len(value) > 40 or not _REGION.fullmatch(value):
        raise invalid(
            f"{value!r} is not a region name", "use a region such as 'us-east-1' (for S3)"
        )
    return value


Region = Annotated[str, AfterValidator(check_region)]

# OLLAMA_ORIGINS is a comma-separated list (envconfig.AllowedOrigins splits on ','): one origin
# may not hold a comma, a space or a quote.
_ORIGIN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9+.*:/_\[\]-]*$")


def check_origin(value: str) -> str:
    if not _ORIGIN.fullmatch(value) or len(value) > 255:
        raise invalid(
            f"{value!r} is not a browser origin",
            "give one origin such as 'https://app.example.com' or 'http://localhost:*' "
            "(no commas, spaces or quotes; one list entry per origin)",
        )
    return value


Origin = Annotated[str, AfterValidator(check_origin)]

# --- paths ----------------------------------------------------------------------------------------

# Directories a data directory may never be: servekit chowns and fills it.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/tmp",
        "/var/cache",
        "/var/run",
        "/snap",
        "/Users",
        "/System",
        "/Library",
        "/Applications",
        "/private",
        "/Volumes",
    }
)


_HOST_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$", re.ASCII)
# Kernel and runtime file systems: nothing of servekit's is kept inside them.
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev", "/run")


def check_host_dir(value: str) -> str:
    """A directory on a managed host: absolute, normalised, not a system directory."""
    check_text(value)
    if not value.startswith("/") or posixpath.normpath(value) != value or value.startswith("//"):
        raise invalid(
            f"{value!r} is not an absolute, normalised path",
            "give an absolute path without '..', '.', '//' or a trailing '/', e.g. '/srv/models'",
        )
    if value in SYSTEM_DIRS:
        raise invalid(
            f"{value!r} is a system directory (servekit would take it over)",
            f"use a directory of its own below it, e.g. '{value.rstrip('/')}/servekit'",
        )
    if not _HOST_PATH.match(value):
        raise invalid(
            f"{value!r} contains a space, a shell character or a non-ASCII character",
            "use letters, digits, '.', '_', '-' and '/' in paths on hosts",
        )
    pseudo = next((d for d in PSEUDO_FILESYSTEMS if value.startswith(d + "/")), None)
    if pseudo is not None:
        raise invalid(
            f"{value!r} is inside {pseudo}, a kernel or runtime file system, not storage",
            "use a directory on a disk, e.g. '/srv/models'",
        )
    return value


HostDir = Annotated[str, AfterValidator(check_host_dir)]


def check_control_path(value: Path) -> Path:
    """A path on the machine running servekit (a key, a secret file): one line of text."""
    bad = control_character(str(value))
    if bad is not None or not str(value).strip():
        raise invalid(
            f"the path contains the control character {bad}" if bad else "the path is empty",
            "give the file's path on one line, e.g. '~/.config/servekit/engine.key'",
        )
    return value


ControlPath = Annotated[Path, AfterValidator(check_control_path)]

# --- URLs -----------------------------------------------------------------------------------------

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
