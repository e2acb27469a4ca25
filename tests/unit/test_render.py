"""What `servekit render` and the deploys write: every vLLM flag exists in vLLM 0.33.0, secrets
never leak into configs or units, and the files match the plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from servekit.hostplan import HostPlan
from servekit.inventory import load_fleet_and_plan
from servekit.placement import plan_fleet
from servekit.render import HostFacts, render_host
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = sorted((ROOT / "inventories").glob("*.py"))
FLAGS = json.loads((ROOT / "tests/data/vllm-0.33.0-flags.json").read_text())["flags"]
FLAG_BY_NAME = {name: flag for flag in FLAGS for name in flag["names"]}


def check_vllm_config(config: dict[str, Any]) -> None:
    """Each key is a long flag of vLLM 0.33.0 that takes the kind of value given."""
    for key, value in config.items():
        flag = FLAG_BY_NAME.get(f"--{key}")
        assert flag is not None, f"--{key} is not a vLLM 0.33.0 flag"
        assert flag["names"][0] == f"--{key}", f"--{key} is an alias of {flag['names'][0]}"
        if isinstance(value, bool):
            assert not flag["takes_value"] and value is True, key
            continue
        assert flag["takes_value"], f"--{key} takes no value"
        if isinstance(value, list):
            assert flag["many"], f"--{key} takes one value"
        elif flag["choices"]:
            assert str(value) in flag["choices"], f"--{key} {value} not in {flag['choices']}"


def all_rendered() -> list[tuple[str, str, str, str]]:
    rendered = []
    for inventory in INVENTORIES:
        _fleet, plan = load_fleet_and_plan(inventory)
        for host in plan.hosts.values():
            for file in render_host(host):
                rendered.append((inventory.stem, file.path, file.content, file.mode))
    return rendered


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.stem)
def test_every_rendered_vllm_flag_exists_in_0_33_0(inventory: Path) -> None:
    _fleet, plan = load_fleet_and_plan(inventory)
    configs = [f for h in plan.hosts.values() for f in render_host(h) if f.path.endswith(".yaml")]
    if inventory.stem != "laptop":
        assert configs
    for config in configs:
        check_vllm_config(yaml.safe_load(config.content))


def test_flag_checker_catches_unknown_and_wrong_flags() -> None:
    with pytest.raises(AssertionError, match="not a vLLM"):
        check_vllm_config({"tensor-paralel-size": 2})
    with pytest.raises(AssertionError, match="alias"):
        check_vllm_config({"device-memory-utilization": 0.9})
    with pytest.raises(AssertionError, match="not in"):
        check_vllm_config({"dtype": "bf16"})


def test_secrets_only_in_0600_env_files() -> None:
    for _inventory, path, content, mode in all_rendered():
        if "<secret from" in content:
            assert path.endswith(".env") and mode == "0600", path
        assert "--api-key" not in content
        assert "api-key" not in content.split("#")[0]


def test_rendered_config_matches_plan() -> None:
    _fleet, plan = load_fleet_and_plan(ROOT / "inventories/node_8xa100.py")
    files = {f.path: f for f in render_host(plan.hosts["hgx1"])}
    config = yaml.safe_load(files["/etc/vllm/llama-3-1-70b-instruct.yaml"].content)
    assert config["tensor-parallel-size"] == 8
    assert config["model"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert config["max-model-len"] == 131072
    unit = files["/etc/systemd/system/vllm-llama-3-1-70b-instruct.service"].content
    assert "ExecStart=/opt/vllm/venvs/0.33.0/bin/vllm serve --config" in unit
    assert "EnvironmentFile=/etc/vllm/llama-3-1-70b-instruct.env" in unit
    assert "User=vllm" in unit and "NoNewPrivileges=yes" in unit
    assert "CUDA_VISIBLE_DEVICES" not in unit  # the replica has the whole node


def _two_models_one_node() -> HostPlan:
    key = SecretRef(env="ENGINE_KEY")
    fleet = Fleet(
        name="shared",
        machines=[SshHost(name="box", address="10.1.0.5", gpu=Gpu(model="L40S", count=4))],
        serve=[
            Serve(model="llama-3.1-8b-instruct", gpus_per_replica=1, replicas=2),
            Serve(model="qwen2.5-14b-instruct", gpus_per_replica=2, port=8100),
        ],
        engine_api_key=key,
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    return plan_fleet(fleet).hosts["box"]


def test_models_sharing_a_node_get_disjoint_gpus_and_ports() -> None:
    host = _two_models_one_node()
    assert [(v.unit, v.port, v.gpu_indices) for v in host.vllm] == [
        ("vllm-llama-3-1-8b-instruct-0", 8000, [0]),
        ("vllm-llama-3-1-8b-instruct-1", 8001, [1]),
        ("vllm-qwen2-5-14b-instruct", 8100, [2, 3]),
    ]
    units = [f.content for f in render_host(host) if f.path.endswith(".service")]
    assert "Environment=CUDA_VISIBLE_DEVICES=2,3" in units[2]
    for file in render_host(host):
        if file.path.endswith(".yaml"):
            check_vllm_config(yaml.safe_load(file.content))


def test_secret_resolver_fills_env_file_only() -> None:
    host = _two_models_one_node()
    files = render_host(host, secret=lambda source: f"VALUE-OF-{source.env}")
    env = next(f for f in files if f.path.endswith(".env"))
    assert "VLLM_API_KEY=VALUE-OF-ENGINE_KEY" in env.content
    # The engine runs offline (HF_HUB_OFFLINE=1: no HTTP calls to the Hub, huggingface.co/docs/
    # huggingface_hub/package_reference/environment_variables): it gets no HF token.
    assert "HF_TOKEN" not in env.content
    assert not any("VALUE-OF" in f.content for f in files if not f.path.endswith(".env"))


def test_multinode_replica_flags_and_interfaces() -> None:
    fleet = Fleet(
        name="mn",
        machines=[
            SshHost(name="n0", address="10.2.0.10", gpu=Gpu(model="H100", count=8)),
            SshHost(name="n1", address="10.2.0.11", gpu=Gpu(model="H100", count=8)),
        ],
        serve=[
            Serve(
                model="llama-3.1-405b-instruct",
                nodes_per_replica=2,
                quantization="none",
                max_model_len=32768,
            )
        ],
        engine_api_key=SecretRef(env="K"),
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    plan = plan_fleet(fleet)
    head, worker = plan.hosts["n0"].vllm[0], plan.hosts["n1"].vllm[0]
    assert (head.role, worker.role) == ("server", "worker")
    assert head.config["nnodes"] == worker.config["nnodes"] == 2
    assert worker.config["node-rank"] == 1 and worker.config["headless"] is True
    assert worker.config["master-addr"] == "10.2.0.10"
    assert head.config["tensor-parallel-size"] == 8 and head.config["pipeline-parallel-size"] == 2
    assert worker.env["VLLM_HOST_IP"] == "10.2.0.11"
    assert plan.hosts["n1"].firewall_allow == ["10.2.0.10"]
    files = render_host(plan.hosts["n1"], facts=HostFacts(interfaces={"10.2.0.11": "ens5"}))
    unit = next(f.content for f in files if f.path.endswith(".service"))
    assert "Environment=NCCL_SOCKET_IFNAME=ens5" in unit
    assert "Environment=GLOO_SOCKET_IFNAME=ens5" in unit
    assert "FI_PROVIDER" not in unit and "LD_LIBRARY_PATH" not in unit  # no EFA here
    check_vllm_config(head.config)
    check_vllm_config(worker.config)
    # With EFA (the driver registered infiniband_verbs): NCCL gets AWS's libfabric plugin
    # (aws-ofi-nccl, shipped on the DLAMI under /opt/amazon/ofi-nccl) on its library path.
    efa = HostFacts(
        interfaces={"10.2.0.11": "ens5"},
        char_devices=("nvidia", "nvidiactl", "nvidia-uvm", "infiniband_verbs"),
    )
    files = render_host(plan.hosts["n1"], facts=efa)
    unit = next(f.content for f in files if f.path.endswith(".service"))
    library_path = next(
        line for line in unit.splitlines() if line.startswith("Environment=LD_LIBRARY_PATH=")
    )
    assert "/opt/amazon/ofi-nccl/lib:" in library_path and "/opt/amazon/efa/lib" in library_path
    assert "Environment=FI_PROVIDER=efa" in unit
    assert "Environment=NCCL_SOCKET_IFNAME=ens5" in unit  # bootstrap stays on the cluster address


def test_gpu_hosts_get_the_gpu_files() -> None:
    _fleet, plan = load_fleet_and_plan(ROOT / "inventories/node_8xa100.py")
    files = {f.path: f.content for f in render_host(plan.hosts["hgx1"])}
    sources = files["/etc/apt/sources.list.d/servekit-nvidia-cuda.sources"]
    assert "URIs: <NVIDIA repository for the host's release>" in sources
    assert (
        "--persistence-mode"
        in files["/etc/systemd/system/nvidia-persistenced.service.d/servekit.conf"]
    )
    assert '"nvidia-";' in files["/etc/apt/apt.conf.d/51servekit-nvidia"]
    repository = "https://mirror.example/cuda/repos/ubuntu2404/x86_64/"
    rendered = render_host(plan.hosts["hgx1"], facts=HostFacts(nvidia_repository=repository))
    assert any(f"URIs: {repository}" in f.content for f in rendered)
    laptop = load_fleet_and_plan(ROOT / "inventories/laptop.py")[1].hosts["local"]
    assert not any("nvidia" in f.path for f in render_host(laptop))


def test_fallback_instance_type_replans_with_the_launched_gpus() -> None:
    """A node that `servekit cloud apply` launched as a fallback type (p4d: A100-40GB) is
    planned for the GPUs it really has, and priced as that type."""
    from servekit.placement import NodeAddress
    from servekit.spec import AwsNodeGroup

    fleet = Fleet(
        name="fb",
        machines=[
            AwsNodeGroup(
                name="a100",
                instance_type="p4de.24xlarge",
                count=2,
                region="us-east-1",
                fallback_instance_types=["p4d.24xlarge"],
                ssh_key="~/.ssh/k",
                ssh_cidrs=["203.0.113.0/24"],
            ),
        ],
        serve=[Serve(model="llama-3.1-70b-instruct", hosts=["a100-1"])],
        engine_api_key=SecretRef(env="K"),
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    addresses = {
        "a100-0": NodeAddress("198.51.100.1", "172.31.0.10", "p4de.24xlarge"),
        "a100-1": NodeAddress("198.51.100.2", "172.31.0.11", "p4d.24xlarge"),
    }
    plan = plan_fleet(fleet, addresses)
    launched = plan.hosts["a100-1"]
    assert launched.gpu_model == "A100-SXM4-40GB"
    assert launched.vllm[0].plan.gpu == "A100-SXM4-40GB"
    assert launched.price_usd_hour == 21.96
    assert plan.hosts["a100-0"].gpu_model == "A100-SXM4-80GB"


MONITORED_INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Grafana, Monitoring, SecretRef, Serve, SshHost

fleet = Fleet(
    name="team",
    machines=[
        SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
        SshHost(name="mon", address="10.0.0.8"),
    ],
    serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1"])],
    monitoring=Monitoring(
        host="mon",
        alert_webhook=SecretRef(file="~/.config/team/hook"),
        grafana=Grafana(
            signing_key="~/.config/team/grafana.asc",
            admin_password=SecretRef(file="~/.config/team/grafana-admin"),
        ),
    ),
    engine_api_key=SecretRef(env="ENGINE_KEY"),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def test_servekit_render_writes_the_monitoring_host_files(tmp_path: Path) -> None:
    """The command itself: the monitoring host's Prometheus, rules, Alertmanager and Grafana
    files, secrets as placeholders (none of them exists here: nothing is read)."""
    import shutil
    import subprocess
    import sys

    inventory = tmp_path / "team.py"
    inventory.write_text(MONITORED_INVENTORY)
    command = shutil.which("servekit", path=str(Path(sys.executable).parent)) or "servekit"
    done = subprocess.run(
        [command, "render", str(inventory), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    mon = tmp_path / "out" / "mon"
    listed = set(done.stdout.split())
    for path in (
        "etc/prometheus/prometheus.yml",
        "etc/prometheus/servekit/servekit.rules.yml",
        "etc/prometheus/alertmanager.yml",
        "etc/grafana/grafana.ini",
        "etc/grafana/provisioning/datasources/servekit.yaml",
        "etc/grafana/dashboards/servekit/servekit-fleet.json",
    ):
        assert (mon / path).is_file() and str(mon / path) in listed, path
    hook = yaml.safe_load((mon / "etc/prometheus/alertmanager.yml").read_text())
    urls = [c["url"] for r in hook["receivers"] for c in r.get("webhook_configs", [])]
    assert urls == ["<secret from file ~/.config/team/hook>"]
    password = mon / "etc/grafana/servekit-admin-password"
    assert password.read_text() == "<secret from file ~/.config/team/grafana-admin>\n"
    assert oct(password.stat().st_mode & 0o777) == "0o640"
    assert not (tmp_path / "out" / "g1" / "etc" / "prometheus").exists()


def test_servekit_render_says_why_cloud_monitoring_waits_for_addresses() -> None:
    _fleet, plan = load_fleet_and_plan(ROOT / "inventories/prod.py")
    from servekit.render import review_files

    files, notes = review_files(plan.hosts["a100-0"])
    assert files == render_host(plan.hosts["a100-0"])
    (note,) = notes
    assert note.startswith("monitoring files not rendered:") and "cloud apply" in note
