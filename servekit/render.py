"""Render the files a host gets (engine configs, environment files, systemd units) from its plan.

One rendering path for both consumers: the deploys upload these files, and `servekit render`
writes them to a folder for review (secrets replaced by placeholders, facts not yet gathered
shown as placeholders too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from servekit import ollama, systemd
from servekit.hostplan import (
    VLLM_CONFIG_DIR,
    VLLM_HOME,
    VLLM_VENVS,
    HostPlan,
    SecretSource,
    VllmInstance,
)
from servekit.spec import RAY_PORT

VLLM_USER = "vllm"
"""The account vLLM and Ray run as (the vLLM deploy creates it)."""
FIREWALL_RULES = "/etc/servekit/firewall.nft"
FIREWALL_UNIT = "servekit-firewall"
NFT = "/usr/sbin/nft"
RAY_TEMP_DIR = f"{VLLM_HOME}/ray"
RAY_FIXED_PORTS = {
    "node-manager-port": 6380,
    "object-manager-port": 6381,
    "dashboard-agent-grpc-port": 6382,
    "metrics-export-port": 6383,
    "runtime-env-agent-port": 6384,
    "dashboard-agent-listen-port": 52365,
}
RAY_WORKER_PORTS = (10002, 19999)
"""Ray's ports are pinned so that the firewall can admit them from the replica's nodes only."""

SecretResolver = Callable[[SecretSource], str]


@dataclass(frozen=True)
class RenderedFile:
    """A file for a host: its absolute path there, content, mode and owner."""

    path: str
    content: str
    mode: str = "0644"
    user: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class HostFacts:
    """What rendering needs from the host itself; unknown values render as placeholders."""

    interfaces: dict[str, str] = field(default_factory=dict)  # address -> interface name
    home: str | None = None  # the login user's home (macOS: Ollama lives there)
    nvidia_repository: str | None = None  # NVIDIA's repository URL for the host's release
    # Character device groups of /proc/devices (facts/devices.py); None: not gathered, and the
    # units allow the GPU groups of every driver branch (systemd.DEFAULT_GPU_GROUPS).
    char_devices: tuple[str, ...] | None = None

    def gpu_device_groups(self) -> list[str]:
        """The GPU/RDMA device groups the engine units allow on this host."""
        return systemd.device_groups(self.char_devices)


def placeholder(source: SecretSource) -> str:
    return f"<secret from {source.describe()}>"


def templates_dir() -> Path:
    """Templates ship inside the wheel as servekit/templates; a checkout keeps them at the top."""
    packaged = Path(str(resources.files("servekit"))) / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    """Templates with systemd's quoting as filters: every unit value from a plan goes through
    one of them (servekit/systemd.py)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        systemd_quote=systemd.quote,
        systemd_env=systemd.environment,
        systemd_exec=systemd.exec_argv,
        systemd_path=systemd.path,
        systemd_bare_path=systemd.bare_path,
        systemd_name=systemd.name,
    )
    return env


def render_template(name: str, **values: object) -> str:
    return environment().get_template(name).render(**values)


def engine_sandbox(facts: HostFacts) -> systemd.Sandbox:
    """The sandbox of vLLM and Ray processes (and of the GPU check that proves it): vLLM's home
    writable, the GPU devices this host's driver registers."""
    return systemd.engine_sandbox(
        [VLLM_HOME], facts.gpu_device_groups(), systemd.devices_note(facts.char_devices)
    )


def vllm_instance_name(instance: VllmInstance) -> str:
    return instance.unit.removeprefix("vllm-")


def uses_ray(instance: VllmInstance) -> bool:
    """Whether this process belongs to a replica run by Ray (a head or a Ray worker node)."""
    return instance.role == "ray-worker" or (
        instance.config.get("distributed-executor-backend") == "ray"
    )


def ray_unit(instance: VllmInstance) -> str:
    """The Ray node unit beside a Ray-backed vLLM instance (`vllm-NAME` -> `ray-NAME`)."""
    return f"ray-{vllm_instance_name(instance)}"


def vllm_paths(plan: HostPlan, instance: VllmInstance) -> dict[str, str]:
    name = vllm_instance_name(instance)
    return {
        "config_file": f"{VLLM_CONFIG_DIR}/{name}.yaml",
        "env_file": f"{VLLM_CONFIG_DIR}/{name}.env",
        "unit_file": f"/etc/systemd/system/{instance.unit}.service",
        "ray_unit_file": f"/etc/systemd/system/{ray_unit(instance)}.service",
        "venv": f"{VLLM_VENVS}/{plan.versions['vllm']}",
    }


def _cluster_env(instance: VllmInstance, plan: HostPlan, facts: HostFacts) -> dict[str, str]:
    """Interface variables NCCL and Gloo need on a multi-node replica (from the host's facts),
    and where a Ray-backed process finds its cluster."""
    if instance.nnodes < 2:
        return {}
    address = plan.cluster_address or ""
    interface = facts.interfaces.get(address, f"<interface holding {address or plan.name}>")
    env = {"NCCL_SOCKET_IFNAME": interface, "GLOO_SOCKET_IFNAME": interface}
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
        f"--temp-dir={RAY_TEMP_DIR}",
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
        home=VLLM_HOME,
        user=VLLM_USER,
        env=env,
        exec_start=[f"{paths['venv']}/bin/ray", "start", "--block", *ray_args(instance, plan)],
        exec_stop=[f"{paths['venv']}/bin/ray", "stop", "--force"],
        sandbox=engine_sandbox(facts),
    )
    return [RenderedFile(paths["ray_unit_file"], unit, "0644")]


def vllm_files(
    plan: HostPlan, instance: VllmInstance, secret: SecretResolver, facts: HostFacts
) -> list[RenderedFile]:
    paths = vllm_paths(plan, instance)
    common = {
        "fleet": plan.fleet,
        "vllm_version": plan.versions["vllm"],
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
        home=VLLM_HOME,
        user=VLLM_USER,
        env={**instance.env, **_cluster_env(instance, plan, facts)},
        env_file=paths["env_file"],
        exec_start=[f"{paths['venv']}/bin/vllm", "serve", "--config", paths["config_file"]],
        sandbox=engine_sandbox(facts),
        ready_timeout_s=instance.ready_timeout_s,
        after=[f"{ray_unit(instance)}.service"] if uses_ray(instance) else [],
    )
    return [
        RenderedFile(paths["config_file"], config, "0640", "root", "vllm"),
        RenderedFile(paths["env_file"], env, "0600"),
        RenderedFile(paths["unit_file"], unit, "0644"),
    ]


def ollama_files(plan: HostPlan, facts: HostFacts) -> list[RenderedFile]:
    """Ollama's service files: on Linux our unit and its settings drop-in, on macOS the
    LaunchAgent plist (with `~` resolved to the user's home from the facts)."""
    settings = plan.ollama
    if settings is None:
        return []
    if plan.os == "macos":
        home = facts.home or ollama.HOME_PLACEHOLDER
        layout = ollama.MacLayout(home, settings.version)
        env = {key: ollama.expand_home(value, home) for key, value in settings.env.items()}
        plist = render_template(
            "ollama.plist.j2",
            label=ollama.LAUNCHD_LABEL,
            binary=layout.binary,
            environment=dict(sorted(env.items())),
            home=home,
            log=layout.log,
        )
        owner = home.rstrip("/").rsplit("/", 1)[-1]
        return [RenderedFile(layout.plist, plist, "0644", owner, "staff")]
    models = settings.env.get("OLLAMA_MODELS", f"{ollama.SERVICE_HOME}/models")
    writable = [ollama.SERVICE_HOME]
    if not models.startswith(ollama.SERVICE_HOME + "/"):
        writable.append(models)
    homes = ("/home/", "/root/", "/run/user/")
    unit = render_template(
        "ollama.service.j2",
        unit=ollama.UNIT,
        dropin=ollama.DROPIN_FILE,
        fleet=plan.fleet,
        user=ollama.SERVICE_USER,
        home=ollama.SERVICE_HOME,
        exec_start=[ollama.LINUX_BINARY, "serve"],
        sandbox=systemd.ollama_sandbox(
            writable,
            facts.gpu_device_groups(),
            # Models kept under a home directory need it visible (and writable) to the service.
            protect_home="no" if any(f"{p}/".startswith(homes) for p in writable) else "yes",
            note=systemd.devices_note(facts.char_devices),
        ),
    )
    dropin = render_template(
        "ollama-settings.conf.j2",
        fleet=plan.fleet,
        version=settings.version,
        environment=ollama.environment_lines(settings.env),
    )
    return [
        RenderedFile(ollama.UNIT_FILE, unit, "0644"),
        RenderedFile(ollama.DROPIN_FILE, dropin, "0644"),
    ]


@dataclass(frozen=True)
class GpuFilePaths:
    """Where the GPU deploy writes its files."""

    sources: str = "/etc/apt/sources.list.d/servekit-nvidia-cuda.sources"
    preferences: str = "/etc/apt/preferences.d/servekit-nvidia-cuda"
    nouveau: str = "/etc/modprobe.d/servekit-blacklist-nouveau.conf"
    unattended_upgrades: str = "/etc/apt/apt.conf.d/51servekit-nvidia"
    persistenced: str = "/etc/systemd/system/nvidia-persistenced.service.d/servekit.conf"
    persistenced_wanted: str = "/etc/systemd/system/multi-user.target.d/servekit-nvidia.conf"
    cuda_profile: str = "/etc/profile.d/servekit-cuda.sh"


GPU_PATHS = GpuFilePaths()

# Package names unattended-upgrades must leave alone (Python regular expressions, matched at the
# start of the name): NVIDIA's driver, Canonical's builds of it, Fabric Manager, CUDA, DCGM.
UNATTENDED_UPGRADES_BLACKLIST = (
    "nvidia-",
    "libnvidia-",
    "cuda-",
    "libcuda",
    "libnvcuvid",
    "libnvoptix",
    "xserver-xorg-video-nvidia",
    "libxnvctrl",
    "firmware-nvidia",
    "linux-(modules|objects|signatures)-nvidia-",
    "datacenter-gpu-manager",
)


def gpu_files(
    repository_url: str, keyring: str, cuda_toolkit: str | None, systemd: bool = True
) -> list[RenderedFile]:
    """The files of a GPU host: NVIDIA's repository, nouveau, holds, persistence, CUDA's PATH."""
    paths = GPU_PATHS
    files = [
        RenderedFile(
            paths.sources,
            render_template("nvidia-cuda.sources.j2", url=repository_url, keyring=keyring),
        ),
        RenderedFile(paths.preferences, render_template("nvidia-cuda.pref.j2")),
        RenderedFile(paths.nouveau, render_template("blacklist-nouveau.conf.j2")),
        RenderedFile(
            paths.unattended_upgrades,
            render_template(
                "nvidia-unattended-upgrades.conf.j2", patterns=UNATTENDED_UPGRADES_BLACKLIST
            ),
        ),
    ]
    if systemd:
        files += [
            RenderedFile(paths.persistenced, render_template("nvidia-persistenced.conf.j2")),
            RenderedFile(
                paths.persistenced_wanted, render_template("nvidia-persistenced-wanted.conf.j2")
            ),
        ]
    if cuda_toolkit:
        files.append(
            RenderedFile(
                paths.cuda_profile, render_template("cuda-profile.sh.j2", version=cuda_toolkit)
            )
        )
    return files


def render_host(
    plan: HostPlan, secret: SecretResolver = placeholder, facts: HostFacts | None = None
) -> list[RenderedFile]:
    """Every file servekit writes on this host, in a stable order."""
    facts = facts or HostFacts()
    files: list[RenderedFile] = []
    if "gpu" in plan.roles:
        repository = facts.nvidia_repository or "<NVIDIA repository for the host's release>"
        keyring = "/usr/share/keyrings/cuda-archive-keyring.gpg"
        files += gpu_files(repository, keyring, plan.gpu_setup.get("cuda_toolkit"))
    for instance in plan.vllm:
        if instance.role != "ray-worker":
            files += vllm_files(plan, instance, secret, facts)
        if uses_ray(instance):
            files += ray_files(plan, instance, facts)
    if plan.vllm:
        files += firewall_files(plan)
    files += ollama_files(plan, facts)
    return files


@dataclass(frozen=True)
class FirewallRules:
    """Ports this host protects, and the addresses (besides loopback) admitted to them."""

    engine_ports: list[int]
    cluster_ports: list[str]
    open_ports: list[int]
    admitted: list[str]

    @property
    def protected(self) -> list[str]:
        return [str(p) for p in self.engine_ports] + self.cluster_ports


def firewall_rules(plan: HostPlan) -> FirewallRules:
    """What `servekit-firewall` enforces for the host's vLLM processes.

    An engine bound to all interfaces has no gateway in front: its clients come from anywhere
    and its API key guards `/v1`, so its port stays open (and `/metrics`, `/health` with it: put
    a gateway in front to close them). Otherwise the engine port (API, `/metrics`, `/health`)
    admits only the gateway and monitoring hosts. Cluster ports (vLLM's master port, Ray's
    ports) admit only the other nodes of the replica.
    """
    engine: set[int] = set()
    opened: set[int] = set()
    cluster: set[str] = set()
    for instance in plan.vllm:
        if instance.role == "server":
            (opened if instance.bind_address == "0.0.0.0" else engine).add(instance.port)
        if instance.nnodes > 1:
            if uses_ray(instance):
                cluster |= {str(RAY_PORT), *(str(p) for p in RAY_FIXED_PORTS.values())}
                cluster.add(f"{RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}")
            elif instance.master_port:
                cluster.add(str(instance.master_port))
    admitted = [a for a in plan.firewall_allow if not a.startswith("<")]
    return FirewallRules(
        engine_ports=sorted(engine),
        cluster_ports=sorted(cluster, key=lambda p: int(p.split("-")[0])),
        open_ports=sorted(opened),
        admitted=admitted,
    )


def firewall_files(plan: HostPlan) -> list[RenderedFile]:
    """The nftables rules file and the unit that loads it at boot."""
    rules = firewall_rules(plan)
    text = render_template(
        "firewall.nft.j2",
        host=plan.name,
        fleet=plan.fleet,
        engine_ports=rules.engine_ports,
        cluster_ports=rules.cluster_ports,
        open_ports=rules.open_ports,
        admitted=rules.admitted,
        protected=rules.protected,
    )
    unit = render_template(
        "servekit-firewall.service.j2",
        rules_file=FIREWALL_RULES,
        nft=NFT,
        sandbox=systemd.firewall_sandbox(),
    )
    return [
        RenderedFile(FIREWALL_RULES, text, "0644"),
        RenderedFile(f"/etc/systemd/system/{FIREWALL_UNIT}.service", unit, "0644"),
    ]


def write_tree(files: list[RenderedFile], root: Path) -> list[Path]:
    """Write rendered files under `root` (mirroring their absolute paths) for review."""
    written = []
    for rendered in files:
        target = root / rendered.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered.content, encoding="utf-8")
        target.chmod(int(rendered.mode, 8))
        written.append(target)
    return written
