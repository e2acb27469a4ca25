"""Weights from an S3 bucket (moto's server on the bridge, boto3 over real HTTP): downloaded as the
service user into the cache before vLLM starts, credentials only on standard input, progress
shown, and a complete download skipped on the next run. The host is reached as the image's sudo
user (`debian`), as cloud servers are: every step goes through sudo."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
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
