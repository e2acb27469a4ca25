"""Every field family of the schema accepts its real values and refuses the rest, injection
attempts included, each refusal naming the field and a fix (servekit/fields.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from servekit.errors import FleetError
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    LocalPath,
    Monitoring,
    OllamaSettings,
    S3Bucket,
    SecretRef,
    Serve,
    Sources,
    Spec,
    SshHost,
    Versions,
)

# Strings that change the meaning of the place they land in: a unit, a shell, nftables, apt.
INJECTIONS = [
    "x\nExecStartPre=+/bin/sh -c id",
    "x\r\nTrusted: yes",
    "x$(id)",
    "x`id`",
    'x"; id; "',
    "x'; id; '",
    "x;id",
    "x\u2028y",  # unicode line separator
    "x\u0085y",  # NEL
    "x\x00y",
    "x\x1b[31m",
]


def refused(build: Callable[[], object]) -> FleetError:
    with pytest.raises(FleetError) as caught:
        built = build()
        if isinstance(built, Spec):
            built.check()
    assert all(p.fix for p in caught.value.problems), caught.value
    return caught.value


def field_of(build: Callable[[], object]) -> list[str]:
    return refused(build).fields


def host(**extra: Any) -> SshHost:
    fields: dict[str, Any] = {"name": "gpu1", "address": "10.0.0.5"}
    fields.update(extra)
    return SshHost(**fields)


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "fd00::5", "2001:db8::1", "gpu1", "gpu-1.example.com", "GPU1.lan."]
)
def test_addresses_accepted(address: str) -> None:
    host(address=address).check()


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.9, 0.0.0.0/0",
        "10.0.0.0/8",
        "10.0.0.5:22",
        "gpu1 gpu2",
        "10.0.0.999",
        "-gpu",
        "gpu_1",
        "",
        "fe80::1%eth0",
        "gpu1\n",
        "gpu1;reboot",
        "gрu1",  # Cyrillic 'р': a look-alike, not an RFC 1123 name
        "[::1]",
        "a" * 64 + ".example",
        *INJECTIONS,
    ],
)
def test_addresses_refused(address: str) -> None:
    error = refused(lambda: host(address=address))
    assert error.fields == ["SshHost.address"], error


# --- free text: no control character in any string of the schema ----------------------------------


TEXT_FIELDS: list[tuple[str, Callable[[str], object], str]] = [
    ("serve.model", lambda v: Serve(model=v), "Serve.model"),
    (
        "serve.served_names",
        lambda v: Serve(model="m", served_names=["ok", v]),
        "Serve.served_names",
    ),
    ("serve.hosts", lambda v: Serve(model="m", hosts=[v]), "Serve.hosts"),
    ("gpu.model", lambda v: Gpu(model=v), "Gpu.model"),
    ("gateway.host", lambda v: Gateway(host=v, api_keys=SecretRef(env="K")), "Gateway.host"),
    ("monitoring.host", lambda v: Monitoring(host=v), "Monitoring.host"),
    ("versions.vllm", lambda v: Versions(vllm=v), "Versions.vllm"),
    ("secret.file", lambda v: SecretRef(file=v), "SecretRef.file"),
    ("ssh_key", lambda v: host(ssh_key=v), "SshHost.ssh_key"),
]


@pytest.mark.parametrize(
    "bad", ["a\nb", "a\rb", "a\tb", "a\x7fb", "a\u2028b", "a\u2029b", "a\x85b"]
)
@pytest.mark.parametrize(
    ("build", "field"), [f[1:] for f in TEXT_FIELDS], ids=[f[0] for f in TEXT_FIELDS]
)
def test_control_characters_refused_in_every_text_field(
    build: Callable[[str], object], field: str, bad: str
) -> None:
    error = refused(lambda: build(bad))
    assert any(f.startswith(field) for f in error.fields), error
    assert any("control character" in p.message for p in error.problems), error


def test_control_characters_refused_in_cloud_fields_too() -> None:
    from servekit.spec import AwsNodeGroup

    error = refused(
        lambda: AwsNodeGroup(
            name="a",
            instance_type="p4de.24xlarge",
            region="us-east-1",
            ssh_key="~/.ssh/k",
            ssh_cidrs=["203.0.113.0/24"],
            subnet_ids=["subnet-1\nx"],
        )
    )
    assert "AwsNodeGroup.subnet_ids" in error.fields[0]


# --- versions and durations ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.17.1", "0.32.3", "0.40.0-rc0", "1.0.0"])
def test_ollama_versions_accepted(version: str) -> None:
    assert Versions(ollama=version).ollama == version


@pytest.mark.parametrize(
    "version", ["0.99.0$(id)", "v0.32.3", "0.32", "0.32.3 ", "0.32.3-beta", "latest", "0.32.3\n"]
)
def test_ollama_versions_refused(version: str) -> None:
    error = refused(lambda: Versions(ollama=version))
    assert error.fields == ["Versions.ollama"] and "X.Y.Z" in error.problems[0].fix


@pytest.mark.parametrize("value", ["5m", "1h30m", "0", "-1", "3600", "1.5h", "300ms", "-1m"])
def test_keep_alive_accepted(value: str) -> None:
    assert OllamaSettings(keep_alive=value).keep_alive == value


@pytest.mark.parametrize("value", ["5 m", "forever", "5m\nX=1", "5d", "", "m", "5m;id"])
def test_keep_alive_refused(value: str) -> None:
    assert refused(lambda: OllamaSettings(keep_alive=value)).fields == ["OllamaSettings.keep_alive"]


@pytest.mark.parametrize("value", ["15s", "1m30s", "15d", "1y", "2w", "500ms"])
def test_prometheus_durations_accepted(value: str) -> None:
    Monitoring(host="m", scrape_interval=value, retention=value).check()


@pytest.mark.parametrize("value", ["0", "", "15", "15 s", "1s1m", "15s\n- job", "0s"])
def test_prometheus_durations_refused(value: str) -> None:
    assert refused(lambda: Monitoring(host="m", retention=value)).fields == ["Monitoring.retention"]


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "revision", ["main", "v1.0", "refs/pr/1", "0e9e39f249a16976918f6564b8830bc894c89659"]
)
def test_revisions_accepted(revision: str) -> None:
    Serve(model="m", revision=revision).check()


@pytest.mark.parametrize(
    "revision", ["../../etc", "main branch", "-rf", "a..b", "x/", "x.lock", "$(id)", "a;b", "a'b"]
)
def test_revisions_refused(revision: str) -> None:
    assert refused(lambda: Serve(model="m", revision=revision)).fields == ["Serve.revision"]


@pytest.mark.parametrize("user", ["ubuntu", "root", "ec2-user", "_svc", "deploy1"])
def test_ssh_users_accepted(user: str) -> None:
    host(ssh_user=user).check()


@pytest.mark.parametrize("user", ["Ubuntu", "a b", "root;id", "$(id)", "1user", "user$", "a" * 40])
def test_ssh_users_refused(user: str) -> None:
    assert refused(lambda: host(ssh_user=user)).fields == ["SshHost.ssh_user"]


@pytest.mark.parametrize("name", ["", "1KEY", "KEY-1", "KEY NAME", "KEY\n", "$(id)"])
def test_secret_env_names_refused(name: str) -> None:
    assert refused(lambda: SecretRef(env=name)).fields[0].startswith("SecretRef")


def test_secret_env_name_accepted() -> None:
    SecretRef(env="SERVEKIT_ENGINE_KEY").check()


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "http://localhost:*", "app://*", "*"]
)
def test_origins_accepted(origin: str) -> None:
    OllamaSettings(origins=[origin]).check()


@pytest.mark.parametrize("origin", ["a,b", "https://x y", '"x"', "x'", "x\ny", ""])
def test_origins_refused(origin: str) -> None:
    assert refused(lambda: OllamaSettings(origins=[origin])).fields == ["OllamaSettings.origins[0]"]


# --- S3 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["models", "my.models-1", "abc"])
def test_buckets_accepted(bucket: str) -> None:
    S3Bucket(bucket=bucket).check()


@pytest.mark.parametrize(
    "bucket", ["ab", "Models", "my_models", "a..b", "192.168.5.4", "xn--abc", "-abc", "a b", "a/b"]
)
def test_buckets_refused(bucket: str) -> None:
    assert refused(lambda: S3Bucket(bucket=bucket)).fields == ["S3Bucket.bucket"]


@pytest.mark.parametrize("prefix", ["", "models/", "team/llama", "a.b/c"])
def test_prefixes_accepted(prefix: str) -> None:
    S3Bucket(bucket="models", prefix=prefix).check()


@pytest.mark.parametrize("prefix", ["../x", "a/../../b", "/abs", "a/./b", "a\\..\\b", "..", "a\nb"])
def test_prefixes_refused(prefix: str) -> None:
    assert refused(lambda: S3Bucket(bucket="models", prefix=prefix)).fields == ["S3Bucket.prefix"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "us-gov-west-1", "garage"])
def test_s3_regions_accepted(region: str) -> None:
    S3Bucket(bucket="models", region=region).check()


@pytest.mark.parametrize("region", ["US-EAST-1", "us east 1", "us-east-1;id", ""])
def test_s3_regions_refused(region: str) -> None:
    assert refused(lambda: S3Bucket(bucket="models", region=region)).fields == ["S3Bucket.region"]


# --- paths on hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/srv/models", "/var/lib/ollama/models", "/data", "/mnt/nfs/m"])
def test_host_dirs_accepted(path: str) -> None:
    OllamaSettings(models_dir=path).check()
    LocalPath(path=path).check()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/usr",
        "/var",
        "/home",
        "/root",
        "/var/lib",
        "/usr/local",
        "/tmp",
        "relative/models",
        "~/models",
        "/srv/../etc",
        "/srv//models",
        "/srv/models/",
        "/srv/./models",
        "/srv/my models",
        "/srv/$(id)",
        "/srv/m\nExecStartPre=+/bin/id",
        "",
    ],
)
def test_host_dirs_refused(path: str) -> None:
    error = refused(lambda: OllamaSettings(models_dir=path))
    assert error.fields == ["OllamaSettings.models_dir"], error
    assert refused(lambda: LocalPath(path=path)).fields == ["LocalPath.path"]


def test_system_directory_fix_names_a_subdirectory() -> None:
    error = refused(lambda: OllamaSettings(models_dir="/var/lib"))
    assert "/var/lib/servekit" in error.problems[0].fix


# --- URLs ---------------------------------------------------------------------------------------

URL_FIELDS = ["python_index", "torch_index", "vllm_wheels", "nvidia_apt", "ollama_releases"]


@pytest.mark.parametrize(
    "url",
    [
        "https://pypi.org/simple",
        "http://10.0.0.2:8080/simple",
        "https://[fd00::2]/repo",
        "https://mirror.example/cuda/repos?x=1",
    ],
)
@pytest.mark.parametrize("field", URL_FIELDS)
def test_urls_accepted(field: str, url: str) -> None:
    Sources(**{field: url}).check()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://mirror.example/x",
        "file:///etc/passwd",
        "https://",
        "https:///path",
        "mirror.example/simple",
        "https://mirror.example/x y",
        "https://mirror.example/\nTrusted: yes",
        'https://mirror.example/"',
        "https://mirror.example/$(id)",
        "https://mirror.example/`id`",
        "https://mirror.example/;id",
        "https://bad_host!/x",
    ],
)
@pytest.mark.parametrize("field", URL_FIELDS)
def test_urls_refused(field: str, url: str) -> None:
    assert refused(lambda: Sources(**{field: url})).fields == [f"Sources.{field}"]


@pytest.mark.parametrize(
    "build",
    [
        lambda url: Sources(python_index=url),
        lambda url: HuggingFace(endpoint=url),
        lambda url: S3Bucket(bucket="models", endpoint_url=url),
    ],
)
def test_urls_with_a_login_refused_with_the_netrc_fix(build: Callable[[str], object]) -> None:
    for url in ("https://user:s3cr3t@mirror.example/simple", "https://u:s3cr3t x@m.example/"):
        error = refused(lambda: build(url))  # noqa: B023 (called at once)
        assert "mirror_credentials=SecretRef(file=" in error.problems[0].fix
        assert "s3cr3t" not in str(error)


# --- inside a fleet: the position is kept ------------------------------------------------------


def test_a_bad_value_deep_in_a_fleet_is_reported_at_its_path() -> None:
    error = refused(
        lambda: Fleet(
            name="t",
            machines=[host(), host(name="gpu2", address="10.0.0.9, 0.0.0.0/0")],
            sources=Sources(weights=S3Bucket(bucket="models", prefix="../../etc")),
            ollama=OllamaSettings(models_dir="/"),
        )
    )
    assert set(error.fields) == {
        "machines[1].address",
        "sources.weights.prefix",
        "ollama.models_dir",
    }, error


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Versions(ollama="٠.٣٢.٣"), "Versions.ollama"),  # Arabic-Indic digits
        (lambda: OllamaSettings(keep_alive="５m"), "OllamaSettings.keep_alive"),  # fullwidth 5
        (lambda: host(address="gpu１"), "SshHost.address"),
        (lambda: S3Bucket(bucket="mоdels"), "S3Bucket.bucket"),  # Cyrillic 'о'
    ],
)
def test_unicode_look_alikes_refused(build: Callable[[], object], field: str) -> None:
    assert refused(build).fields == [field]
