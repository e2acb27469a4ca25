"""Names: git revisions, user names, environment variables, S3 buckets and key prefixes, AWS
regions, Ollama origins."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from servekit.errors import invalid
from servekit.fields.text import check_text

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
