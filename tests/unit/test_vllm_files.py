"""What the vLLM deploy derives from a plan, without hosts: where weights live per source, the
firewall rules, Ray units, the units a host holds, and `servekit render` showing it all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from servekit.cli import app
from servekit.hostplan import HfWeights, HostPlan, LocalWeights, S3Weights, SourcesPlan
from servekit.operations.vllm_work import host_work
from servekit.placement import plan_fleet
from servekit.render import firewall_rules, render_host
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    LocalPath,
    Monitoring,
    S3Bucket,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)
from servekit.vllm_builds import builds
from servekit.vllm_builds import python_satisfies as _python_ok
from servekit.weights import locate

ROOT = Path(__file__).resolve().parents[2]


def nft_set(text: str, name: str) -> list[str]:
    """The elements of the named set in an nftables file (empty when it has none)."""
    body = text.split(f"set {name} {{", 1)[1].split("}", 1)[0]
    if "elements = {" not in body:
        return []
    return [e.strip() for e in body.split("elements = {", 1)[1].split(",")]


KEY = SecretRef(env="ENGINE_KEY")
HF = Sources(weights=HuggingFace(token=SecretRef(env="HF")))


def machines(count: int, gpus: int = 1, gpu: str = "A100-80GB") -> list[SshHost]:
    return [
        SshHost(name=f"n{i}", address=f"10.9.0.{10 + i}", gpu=Gpu(model=gpu, count=gpus))
        for i in range(count)
    ]


def test_weights_locations_per_source() -> None:
    hf = locate(HfWeights(), "meta-llama/Llama-3.1-8B-Instruct", "abc1")
    assert hf.model_arg == "meta-llama/Llama-3.1-8B-Instruct" and hf.revision == "abc1"
    assert hf.marker == "/var/lib/vllm/weights/hf--meta-llama--Llama-3.1-8B-Instruct--abc1.json"
    s3 = locate(S3Weights(bucket="b"), "org/model", "abc1")
    assert s3.model_arg == s3.directory == "/var/lib/vllm/models/org/model"
    assert s3.revision is None  # a bucket has no revisions: the flag is not rendered
    local = locate(LocalWeights(path="/mnt/models/"), "org/model", None)
    assert local.model_arg == "/mnt/models/org/model" and local.marker is None


@pytest.mark.parametrize(
    ("weights", "model", "revision"),
    [
        (HuggingFace(token=SecretRef(env="HF")), "meta-llama/Llama-3.1-8B-Instruct", "0e9e39f"),
        (
            S3Bucket(bucket="models", prefix="hf"),
            "/var/lib/vllm/models/meta-llama/Llama-3.1-8B-Instruct",
            None,
        ),
        (LocalPath(path="/nfs/models"), "/nfs/models/meta-llama/Llama-3.1-8B-Instruct", None),
    ],
)
def test_model_flag_follows_the_weights_source(weights: object, model: str, revision: str) -> None:
    fleet = Fleet(
        name="w",
        machines=machines(1),
        serve=[Serve(model="llama-3.1-8b-instruct", revision="0e9e39f")],
        engine_api_key=KEY,
        sources=Sources(weights=weights),  # type: ignore[arg-type]
    )
    instance = plan_fleet(fleet).hosts["n0"].vllm[0]
    assert instance.config["model"] == model
    assert instance.config.get("revision") == revision
    assert instance.served_names[0] == "meta-llama/Llama-3.1-8B-Instruct"


def _gatewayed(count: int = 2, nodes: int = 1) -> dict[str, HostPlan]:
    fleet = Fleet(
        name="gw",
        machines=[*machines(count), SshHost(name="gw", address="10.9.0.99")],
        serve=[Serve(model="llama-3.1-8b-instruct", nodes_per_replica=nodes)],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        monitoring=Monitoring(host="gw"),
        engine_api_key=KEY,
        sources=HF,
    )
    return plan_fleet(fleet).hosts


def test_firewall_behind_a_gateway_admits_gateway_and_monitoring_only() -> None:
    hosts = _gatewayed()
    rules = firewall_rules(hosts["n0"])
    assert rules.engine_ports == [8000] and rules.open_ports == []
    assert rules.admitted == ["10.9.0.99"] and rules.cluster_ports == []
    text = next(f.content for f in render_host(hosts["n0"]) if f.path.endswith(".nft"))
    # typed sets (one per family), the rules refer to them by name
    assert nft_set(text, "admitted4") == ["10.9.0.99"] and nft_set(text, "admitted6") == []
    assert nft_set(text, "protected") == ["8000"]
    assert "ip saddr @admitted4 tcp dport @protected accept" in text
    assert "tcp dport @protected reject with tcp reset" in text
    assert "flush ruleset" not in text  # only servekit's own table is replaced
    assert render_host(hosts["gw"]) == []  # no vLLM there, no firewall of ours


def test_firewall_without_gateway_leaves_the_api_open_and_guards_cluster_ports() -> None:
    fleet = Fleet(
        name="mn",
        machines=machines(2),
        serve=[Serve(model="llama-3.1-8b-instruct", nodes_per_replica=2)],
        engine_api_key=KEY,
        sources=HF,
    )
    hosts = plan_fleet(fleet).hosts
    rules = firewall_rules(hosts["n0"])
    assert rules.open_ports == [8000] and rules.engine_ports == []
    assert rules.cluster_ports == ["29501"] and rules.admitted == ["10.9.0.11"]


def test_ray_backed_replica_renders_ray_units_with_pinned_ports() -> None:
    fleet = Fleet(
        name="ray",
        machines=machines(3),
        serve=[
            Serve(
                model="llama-3.1-8b-instruct",
                nodes_per_replica=3,
                pipeline_parallel=3,
                distributed_backend="ray",
            )
        ],
        engine_api_key=KEY,
        sources=HF,
    )
    hosts = plan_fleet(fleet).hosts
    head = {f.path: f.content for f in render_host(hosts["n0"])}
    worker = {f.path: f.content for f in render_host(hosts["n1"])}
    ray_head = head["/etc/systemd/system/ray-llama-3-1-8b-instruct.service"]
    assert "ray start --block --head --port=6379 --node-ip-address=10.9.0.10" in ray_head
    assert "--num-gpus=1" in ray_head and "--temp-dir=/var/lib/vllm/ray" in ray_head
    assert "User=vllm" in ray_head
    assert "/etc/systemd/system/ray-llama-3-1-8b-instruct.service" in worker
    assert "/etc/servekit/firewall.nft" in worker
    # a Ray worker node runs no vLLM process of its own
    assert not [p for p in worker if p.startswith("/etc/vllm/") or "/vllm-" in p]
    ray_worker = worker["/etc/systemd/system/ray-llama-3-1-8b-instruct.service"]
    assert "--address=10.9.0.10:6379 --node-ip-address=10.9.0.11" in ray_worker
    config = yaml.safe_load(head["/etc/vllm/llama-3-1-8b-instruct.yaml"])
    assert config["distributed-executor-backend"] == "ray" and "nnodes" not in config
    unit = head["/etc/systemd/system/vllm-llama-3-1-8b-instruct.service"]
    assert "Environment=RAY_ADDRESS=10.9.0.10:6379" in unit
    assert "ray-llama-3-1-8b-instruct.service" in unit.split("[Service]")[0]
    rules = firewall_rules(hosts["n1"])
    assert "6379" in rules.cluster_ports and "10002-19999" in rules.cluster_ports
    assert host_work(hosts["n0"]).requirements == ("vllm==0.33.0", "ray==2.60.0")


def test_host_work_lists_units_weights_and_tools() -> None:
    fleet = Fleet(
        name="two",
        machines=machines(1, gpus=2),
        serve=[Serve(model="llama-3.1-8b-instruct", gpus_per_replica=1, replicas=2)],
        engine_api_key=KEY,
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    work = host_work(plan_fleet(fleet).hosts["n0"])
    assert work.units() == [
        "vllm-llama-3-1-8b-instruct-0.service",
        "vllm-llama-3-1-8b-instruct-1.service",
        "servekit-firewall.service",
    ]
    assert len(work.weights) == 1  # two replicas, one download
    assert work.tools == ("huggingface_hub==2.4.0",)
    assert work.waves == 3  # start, then replica 0, then replica 1
    spec = work.spec()
    assert "HF" not in str(spec)  # no secrets in what is sent as a command line
    assert spec["health"]["vllm-llama-3-1-8b-instruct-1"] == "http://127.0.0.1:8001/health"


def test_builds_and_python_ranges() -> None:
    pypi, cu129 = builds("0.33.0", SourcesPlan(python_index="http://mirror/simple"))
    assert pypi.index_url == "http://mirror/simple" and pypi.extra_index_urls == ()
    assert cu129.unconfirmed and cu129.index_strategy == "unsafe-best-match"
    assert _python_ok("3.11.2", ">=3.11,<3.15") and _python_ok("3.14.0", ">=3.11,<3.15")
    assert not _python_ok("3.10.12", ">=3.11,<3.15") and not _python_ok("3.15.0", ">=3.11,<3.15")


def test_servekit_render_shows_what_the_deploy_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["render", str(ROOT / "inventories/node_8xa100.py"), str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [w for w in written if "nvidia" not in w and "nouveau" not in w] == [
        "hgx1/etc/servekit/firewall.nft",
        "hgx1/etc/systemd/system/servekit-firewall-rollback.service",
        "hgx1/etc/systemd/system/servekit-firewall-rollback.timer",
        "hgx1/etc/systemd/system/servekit-firewall.service",
        "hgx1/etc/systemd/system/vllm-llama-3-1-70b-instruct.service",
        "hgx1/etc/vllm/llama-3-1-70b-instruct.env",
        "hgx1/etc/vllm/llama-3-1-70b-instruct.yaml",
    ]
    env = (tmp_path / "hgx1/etc/vllm/llama-3-1-70b-instruct.env").read_text()
    assert "VLLM_API_KEY=<secret from file" in env
