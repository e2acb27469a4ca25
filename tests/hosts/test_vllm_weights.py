"""Weights downloaded as the service user before vLLM starts, secrets only on standard input,
progress shown, a complete download skipped on the next run:

- from an S3 bucket (moto's server on the bridge, boto3 over real HTTP), the host reached as the
  image's sudo user (`debian`), as cloud servers are: every step goes through sudo;
- from Hugging Face (a stand-in Hub on the bridge, `tests/hosts/fakes/hub.py`, reached through
  the source's endpoint by the real `huggingface_hub`), gated behind a token, and a model
  revision upgrade that downloads the new snapshot beside the old one and rolls the unit.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from fakes.hub import Hub
from hostbench import BenchHost, PackageIndex, settings
from hostbench.plugin import HostFactory
from moto.server import ThreadedMotoServer
from standins.build import build_vllm_wheel
from vllm_support import deploy, fake_gpus, http, secret, ssh_host, write_fleet

pytestmark = pytest.mark.hosts

ACCESS_KEY = "AKIASERVEKITTEST0001"
SECRET_KEY = "s3-secret-7c1e0b9d4a2f6e8d"
CHECKPOINT = "meta-llama/Llama-3.1-8B-Instruct"
DEST = f"/var/lib/vllm/models/{CHECKPOINT}"


@dataclass
class S3Fleet:
    host: BenchHost
    inventory: Path


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Fleet]:
    workdir = tmp_path_factory.mktemp("vllm-s3")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    (host,) = test_hosts(1)
    fake_gpus(host)
    port = free_port(settings.GATEWAY)
    server = ThreadedMotoServer(ip_address=settings.GATEWAY, port=port)
    server.start()
    try:
        endpoint = f"http://{settings.GATEWAY}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        s3.create_bucket(Bucket="models")
        prefix = f"hf/{CHECKPOINT}"
        s3.put_object(Bucket="models", Key=f"{prefix}/config.json",
                      Body=b'{"max_position_embeddings": 131072}')  # fmt: skip
        s3.put_object(Bucket="models", Key=f"{prefix}/model-00001-of-00001.safetensors",
                      Body=b"\0" * (3 << 20))  # fmt: skip
        credentials = secret(workdir, "s3-credentials", f"{ACCESS_KEY}\n{SECRET_KEY}")
        key = secret(workdir, "engine.key", "sk-s3-engine")
        fleet = f"""Fleet(
    name="s3",
    machines=[{ssh_host(host, user="debian")}],
    serve=[Serve(name="chat", model="llama-3.1-8b-instruct")],
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(
        python_index={package_index.url!r},
        weights=S3Bucket(bucket="models", prefix="hf", endpoint_url={endpoint!r},
                         region="us-east-1", credentials=SecretRef(file={str(credentials)!r})),
    ),
)"""
        yield S3Fleet(host, write_fleet(workdir / "inventory" / "s3.py", fleet))
    finally:
        server.stop()


def test_weights_come_from_s3_before_vllm_starts(s3_fleet: S3Fleet) -> None:
    host = s3_fleet.host
    run = deploy(s3_fleet.inventory).check()
    assert host.name in run.changes()["vLLM | Fetch the weights"]
    assert f"s3://models/hf/{CHECKPOINT}/: 2 files" in run.stderr  # progress, as it went
    listing = host.run(f"stat -c '%U %s %n' {DEST}/*").stdout
    assert f"vllm 3145728 {DEST}/model-00001-of-00001.safetensors" in listing
    assert f"vllm 35 {DEST}/config.json" in listing
    marker = host.run("cat /var/lib/vllm/weights/s3--meta-llama--Llama-3.1-8B-Instruct.json")
    assert '"files": 2' in marker.stdout
    assert f'model: "{DEST}"' in host.run("cat /etc/vllm/chat.yaml").stdout
    assert http(f"http://{host.address}:8000/health")[0] == 200
    for text in (run.stdout, run.stderr, host.run("ps -eo args; journalctl -o cat").stdout):
        assert SECRET_KEY not in text


def test_complete_weights_are_not_fetched_again(s3_fleet: S3Fleet) -> None:
    run = deploy(s3_fleet.inventory).check()
    assert run.changes() == {}, run
    assert "s3://models" not in run.stderr


HF_TOKEN = "hf_servekitTestToken0123456789"


@dataclass
class HfFleet:
    host: BenchHost
    hub: Hub
    workdir: Path
    index: PackageIndex

    def inventory(self, revision: str | None) -> Path:
        token = secret(self.workdir, "hf-token", HF_TOKEN)
        key = secret(self.workdir, "engine.key", "sk-hf-engine")
        fleet = f"""Fleet(
    name="hf",
    machines=[{ssh_host(self.host)}],
    serve=[Serve(name="chat", model="llama-3.1-8b-instruct", revision={revision!r})],
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(
        python_index={self.index.url!r},
        weights=HuggingFace(endpoint={self.hub.url!r}, token=SecretRef(file={str(token)!r})),
    ),
)"""
        return write_fleet(self.workdir / "inventory" / "hf.py", fleet)


@pytest.fixture(scope="module")
def hf_fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HfFleet]:
    workdir = tmp_path_factory.mktemp("vllm-hf")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    host = test_hosts(2)[1]
    fake_gpus(host)
    hub = Hub(settings.GATEWAY, token=HF_TOKEN)
    hub.add(CHECKPOINT, "main", {
        "config.json": b'{"max_position_embeddings": 131072}',
        "model-00001-of-00001.safetensors": b"\1" * (2 << 20),
    })  # fmt: skip
    try:
        yield HfFleet(host, hub, workdir, package_index)
    finally:
        hub.stop()


HF_REPO = "/var/lib/vllm/huggingface/hub/models--meta-llama--Llama-3.1-8B-Instruct"


def hf_snapshots(host: BenchHost) -> list[str]:
    return host.run(f"ls {HF_REPO}/snapshots").stdout.split()


def test_weights_come_from_hugging_face_with_the_token(hf_fleet: HfFleet) -> None:
    host = hf_fleet.host
    run = deploy(hf_fleet.inventory(None)).check()
    assert f"{CHECKPOINT}@main: downloading from {hf_fleet.hub.url}" in run.stderr
    assert host.name in run.changes()["vLLM | Fetch the weights"]
    (snapshot,) = hf_snapshots(host)
    owner = host.run(f"stat -c %U {HF_REPO}/snapshots/{snapshot}/config.json")
    assert owner.stdout.strip() == "vllm"
    assert f'model: "{CHECKPOINT}"' in host.run("cat /etc/vllm/chat.yaml").stdout
    assert http(f"http://{host.address}:8000/health")[0] == 200  # loaded offline from the cache
    assert f"GET /{CHECKPOINT}/resolve/{snapshot}/config.json" in hf_fleet.hub.requests
    for text in (run.stdout, run.stderr, host.run("ps -eo args; journalctl -o cat").stdout):
        assert HF_TOKEN not in text
    holders = host.run(f"grep -rlF {HF_TOKEN} /etc /var /opt /tmp; true").stdout.split()
    # the engine runs offline (HF_HUB_OFFLINE=1): the token reached only the downloader, on stdin
    assert holders == []
    assert deploy(hf_fleet.inventory(None)).check().changes() == {}


def test_model_revision_upgrade_downloads_beside_and_rolls(hf_fleet: HfFleet) -> None:
    host = hf_fleet.host
    (old,) = hf_snapshots(host)
    new = hf_fleet.hub.add(CHECKPOINT, "v2", {
        "config.json": b'{"max_position_embeddings": 131072, "note": "v2"}',
        "model-00001-of-00001.safetensors": b"\2" * (2 << 20),
    })  # fmt: skip
    run = deploy(hf_fleet.inventory(new)).check()
    changed = run.changes()
    assert host.name in changed["vLLM | Fetch the weights"]
    assert host.name in changed["vLLM | Start vLLM servers (wave 1)"]  # a rolling restart
    assert sorted(hf_snapshots(host)) == sorted([old, new])
    assert f'revision: "{new}"' in host.run("cat /etc/vllm/chat.yaml").stdout
    journal = host.run("journalctl -u vllm-chat -o cat --no-pager").stdout
    assert f"snapshots/{new}" in journal  # the engine loaded the new revision
    assert http(f"http://{host.address}:8000/health")[0] == 200
    assert deploy(hf_fleet.inventory(new)).check().changes() == {}
