"""The files of one vLLM process and of a Ray node on a host: config, env file (secrets, 0600) and
systemd units, every path from the vLLM layout.
"""

from __future__ import annotations

from collections.abc import Callable

from servekit import systemd
from servekit.firewall import FIREWALL_UNIT
from servekit.hostfacts import HostFacts
from servekit.hostplan import HostPlan, SecretSource, VllmInstance, ray_unit, uses_ray
from servekit.spec import RAY_FIXED_PORTS, RAY_PORT, RAY_WORKER_PORTS
from servekit.templating import RenderedFile, render_template
from servekit.vllm_layout import LAYOUT

SecretResolver = Callable[[SecretSource], str]


def engine_sandbox(facts: HostFacts) -> systemd.Sandbox:
    """The sandbox of vLLM and Ray processes (and of the GPU check that proves it): vLLM's home
    writable, the GPU devices this host's driver registers."""
    return systemd.engine_sandbox(
        [LAYOUT.home], facts.gpu_device_groups(), systemd.devices_note(facts.char_devices)
    )


def vllm_paths(plan: HostPlan, instance: VllmInstance) -> dict[str, str]:
    """The files of one instance and the venv it runs (from the layout)."""
    return {
        "config_file": LAYOUT.config_file(instance),
        "env_file": LAYOUT.env_file(instance),
        "unit_file": LAYOUT.unit_file(instance),
        "ray_unit_file": LAYOUT.ray_unit_file(instance),
        "venv": LAYOUT.venv(plan.versions.vllm),
    }


# NCCL reaches EFA only through AWS's libfabric plugin (aws-ofi-nccl), which it loads as
# libnccl-net.so from the library path ("ensure LD_LIBRARY_PATH is set to include that prefix so
# ... binaries can find the plugin": github.com/aws/aws-ofi-nccl README; without it NCCL falls
# back to sockets, NVIDIA-NeMo/RL pull 2359). The Deep Learning AMIs ship it (release notes
# list ofi_nccl_version, docs.aws.amazon.com/dlami/latest/devguide/) under /opt/amazon/ofi-nccl
# (lib, or lib/<multiarch> in newer builds; older images /opt/amazon/aws-ofi-nccl/lib) and
# libfabric under /opt/amazon/efa/lib. Directories that do not exist are skipped by the loader.
EFA_LIBRARY_PATH = ":".join(
    (
        "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu",
        "/opt/amazon/ofi-nccl/lib/aarch64-linux-gnu",
        "/opt/amazon/ofi-nccl/lib",
        "/opt/amazon/aws-ofi-nccl/lib",
        "/opt/amazon/efa/lib",
    )
)
# The libfabric provider for EFA (aws-ofi-nccl README: "Users can specify to use a preferred
# libfabric provider with FI_PROVIDER").
EFA_ENV = {"LD_LIBRARY_PATH": EFA_LIBRARY_PATH, "FI_PROVIDER": "efa"}


def has_efa(facts: HostFacts) -> bool:
    """EFA devices on this host: the driver registered InfiniBand verbs (/proc/devices)."""
    return facts.char_devices is not None and any(
        group in facts.char_devices for group in systemd.INFINIBAND_GROUPS
    )


def _cluster_env(instance: VllmInstance, plan: HostPlan, facts: HostFacts) -> dict[str, str]:
    """Interface variables NCCL and Gloo need on a multi-node replica (from the host's facts),
    AWS's NCCL plugin where the host has EFA, and where a Ray-backed process finds its
    cluster."""
    if instance.nnodes < 2:
        return {}
    address = plan.cluster_address or ""
    interface = facts.interfaces.get(address, f"<interface holding {address or plan.name}>")
    env = {"NCCL_SOCKET_IFNAME": interface, "GLOO_SOCKET_IFNAME": interface}
    if has_efa(facts):
        env.update(EFA_ENV)
    if uses_ray(instance):
        env["RAY_ADDRESS"] = f"{instance.head_address}:{RAY_PORT}"
        if plan.cluster_address:
            env["RAY_NODE_IP_ADDRESS"] = plan.cluster_address
            env["RAY_OVERRIDE_NODE_IP_ADDRESS"] = plan.cluster_address
    return env


def ray_args(instance: VllmInstance, plan: HostPlan) -> list[str]:
    """`ray start --block` arguments of this node: head or worker, its address, GPUs and ports."""
    args = (
        ["--head", f"--port={RAY_PORT}"]
        if instance.role == "server"
        else [f"--address={instance.head_address}:{RAY_PORT}"]
    )
    args += [
        f"--node-ip-address={plan.cluster_address}",
        f"--num-gpus={len(instance.gpu_indices)}",
        f"--temp-dir={LAYOUT.ray_temp_dir}",
        "--disable-usage-stats",
    ]
    if instance.role == "server":
        args.append("--include-dashboard=false")
    args += [f"--{flag}={port}" for flag, port in RAY_FIXED_PORTS.items()]
    args += [f"--min-worker-port={RAY_WORKER_PORTS[0]}", f"--max-worker-port={RAY_WORKER_PORTS[1]}"]
    return args


def ray_files(plan: HostPlan, instance: VllmInstance, facts: HostFacts) -> list[RenderedFile]:
    """The Ray node unit of a Ray-backed replica on this host (head or worker)."""
    paths = vllm_paths(plan, instance)
    env = {**instance.env, **_cluster_env(instance, plan, facts), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("VLLM_ENGINE_READY_TIMEOUT_S", None)
    unit = render_template(
        "ray.service.j2",
        fleet=plan.fleet,
        unit=ray_unit(instance),
        ray_role="head" if instance.role == "server" else "worker",
        serve=instance.serve,
        replica=instance.replica,
        node_rank=instance.node_rank,
        nnodes=instance.nnodes,
        home=LAYOUT.home,
        user=LAYOUT.user,
        env=env,
        exec_start=[f"{paths['venv']}/bin/ray", "start", "--block", *ray_args(instance, plan)],
        exec_stop=[f"{paths['venv']}/bin/ray", "stop", "--force"],
        sandbox=engine_sandbox(facts),
        firewall_unit=FIREWALL_UNIT,
    )
    return [RenderedFile(paths["ray_unit_file"], unit, "0644")]


def vllm_files(
    plan: HostPlan, instance: VllmInstance, secret: SecretResolver, facts: HostFacts
) -> list[RenderedFile]:
    paths = vllm_paths(plan, instance)
    common = {
        "fleet": plan.fleet,
        "vllm_version": plan.versions.vllm,
        "unit": instance.unit,
    }
    config = render_template("vllm.yaml.j2", **common, config=instance.config, plan=instance.plan)
    env = render_template(
        "vllm.env.j2",
        **common,
        secrets={key: secret(source) for key, source in instance.secret_env.items()},
    )
    unit = render_template(
        "vllm.service.j2",
        **common,
        serve=instance.serve,
        role=instance.role,
        replica=instance.replica,
        node_rank=instance.node_rank,
        nnodes=instance.nnodes,
        checkpoint=instance.checkpoint,
        home=LAYOUT.home,
        user=LAYOUT.user,
        env={**instance.env, **_cluster_env(instance, plan, facts)},
        env_file=paths["env_file"],
        exec_start=[f"{paths['venv']}/bin/vllm", "serve", "--config", paths["config_file"]],
        sandbox=engine_sandbox(facts),
        firewall_unit=FIREWALL_UNIT,
        ready_timeout_s=instance.ready_timeout_s,
        after=[f"{ray_unit(instance)}.service"] if uses_ray(instance) else [],
    )
    return [
        RenderedFile(paths["config_file"], config, "0640", "root", LAYOUT.user),
        RenderedFile(paths["env_file"], env, "0600"),
        RenderedFile(paths["unit_file"], unit, "0644"),
    ]
