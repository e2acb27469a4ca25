"""vLLM on GPU servers: install, weights, configuration, serving, multi-node, upgrades.

`vllm_host()` is the pyinfra deploy `deploys/vllm.py` runs on every host of a fleet. On a host
whose plan (host data `servekit`, see `servekit.hostplan`) has vLLM processes it converges, in
this order:

1. Debian packages (python3-venv for uv's bootstrap, nftables for the firewall);
2. the `vllm` system user and its directories (caches under /var/lib/vllm, configs in /etc/vllm);
3. uv, then one virtualenv per pinned vLLM version (/opt/vllm/venvs/<version>) with the CUDA build
   the host's driver runs (refused, naming the alternatives, when the driver is too old);
4. the weights, downloaded as the service user before anything starts (Hugging Face or S3), or
   checked (a local path);
5. the firewall (`servekit.deploys.firewall`);
6. for Ray-backed replicas: the Ray head, then the Ray workers, then a wait until `ray status`
   lists every node;
7. units servekit wrote earlier that the plan no longer has are stopped and removed;
8. the vLLM processes: configs, env files and units written where they differ, then started or
   restarted in waves (`servekit.deploys.rollout`): replicas that are not running start together
   (headless workers before their head); running replicas whose configuration or venv changed
   restart one replica index at a time, each gated on `/health`, and return to their previous
   files (and so venv) if they fail;
9. `current` (and `previous`) venv links, older venvs removed, and a report: the run fails on
   hosts whose rollout failed, saying what happened.

Known limit: a Ray-backed replica's Ray nodes restart (new venv, changed unit) before its vLLM
process rolls, and are not rolled back with it.

Every step reads the host's state once (`hoststate.view`) and does nothing when it matches, so a
second run changes nothing and costs one command per host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from pyinfra import logger
from pyinfra.api.command import StringCommand
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit import catalog, shell
from servekit.credentials import NETRC_FILE
from servekit.deploys import pyenv
from servekit.deploys.common import Commands, failure, problem
from servekit.deploys.credentials import mirror_login_files
from servekit.deploys.firewall import firewall_ops
from servekit.deploys.hoststate import (
    apply_files,
    differs,
    file_entry,
    python_command,
    run_key,
    stale,
    stdin_json,
    streamed,
    view,
)
from servekit.deploys.rollout import Process, Status, current
from servekit.facts.devices import PROC_DEVICES, char_device_groups
from servekit.facts.nvidia import NvidiaGpus
from servekit.firewall import FIREWALL_RULES, FIREWALL_UNIT
from servekit.hostplan import (
    VLLM_CONFIG_DIR,
    VLLM_HOME,
    VLLM_VENVS,
    HfWeights,
    HostPlan,
    S3Weights,
    SourcesPlan,
    VllmInstance,
    uses_ray,
)
from servekit.hostplan import ray_unit as ray_unit_name
from servekit.render import (
    VLLM_USER,
    HostFacts,
    RenderedFile,
    render_host,
    vllm_paths,
)
from servekit.secrets import SecretError, read_secret, read_secret_lines
from servekit.shell import quote as q
from servekit.spec import RAY_PORT
from servekit.weights import HF_HOME, MARKERS_DIR, MODELS_DIR, WeightsLocation, locate, s3_prefix

UNIT_DIR = "/etc/systemd/system"
SERVEKIT_MARK = "Written by servekit."
TOOLS_VENV = "/opt/servekit/tools"
CURRENT_LINK = "/opt/vllm/current"
PREVIOUS_LINK = "/opt/vllm/previous"
ROLLBACK_DIR = "/var/lib/servekit/rollback"
VENV_MARKER = ".servekit-install.json"
APT_PACKAGES = ("python3-venv", "nftables")
WORKER_READY_S = 120
RAY_READY_S = 300

# (path, owner, group, mode) of every directory the service needs.
DIRECTORIES = (
    (VLLM_HOME, VLLM_USER, VLLM_USER, "0750"),
    (HF_HOME, VLLM_USER, VLLM_USER, "0750"),
    (f"{VLLM_HOME}/cache", VLLM_USER, VLLM_USER, "0750"),
    (f"{VLLM_HOME}/cache/vllm", VLLM_USER, VLLM_USER, "0750"),
    (f"{VLLM_HOME}/cache/triton", VLLM_USER, VLLM_USER, "0750"),
    (MODELS_DIR, VLLM_USER, VLLM_USER, "0750"),
    (MARKERS_DIR, VLLM_USER, VLLM_USER, "0750"),
    (VLLM_CONFIG_DIR, "root", VLLM_USER, "0750"),
    ("/opt/vllm", "root", "root", "0755"),
    (VLLM_VENVS, "root", "root", "0755"),
    (ROLLBACK_DIR, "root", "root", "0700"),
)


# --- what a host should hold (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """A CUDA build of a vLLM release and how uv installs it."""

    cuda: str
    min_driver: str
    source: str
    unconfirmed: bool
    index_url: str
    extra_index_urls: tuple[str, ...]
    index_strategy: str | None

    def describe(self) -> str:
        note = " (unconfirmed build)" if self.unconfirmed else ""
        return f"CUDA {self.cuda} build, needs driver >= {self.min_driver}{note}"


def builds(version: str, sources: SourcesPlan) -> list[Build]:
    """The catalog's builds of `version`, in order of preference, with their indexes."""
    release = catalog.vllm_release(version)
    result = []
    for build in release.builds:
        cu = "cu" + build.cuda.replace(".", "")
        if build.source == "pypi":
            extra: tuple[str, ...] = ()
            strategy = None
        else:
            wheels = sources.vllm_wheels.rstrip("/")
            torch = sources.torch_index.rstrip("/")
            extra = (f"{wheels}/{version}/{cu}", f"{torch}/{cu}")
            strategy = "unsafe-best-match"
        result.append(
            Build(
                cuda=build.cuda,
                min_driver=build.min_driver,
                source=build.source,
                unconfirmed=build.unconfirmed,
                index_url=sources.python_index,
                extra_index_urls=extra,
                index_strategy=strategy,
            )
        )
    return result


class DriverTooOld(ValueError):
    """No build of the pinned vLLM runs on this driver; the message names the alternatives."""


def choose_build(version: str, sources: SourcesPlan, driver: str) -> Build:
    """The first build whose minimum driver the host's driver meets."""
    candidates = builds(version, sources)
    for build in candidates:
        if catalog.version_tuple(driver) >= catalog.version_tuple(build.min_driver):
            return build
    options = "; ".join(b.describe() for b in candidates)
    newer = [
        str(branch)
        for branch, info in catalog.driver_branches().items()
        if catalog.version_tuple(info.max_cuda) >= catalog.version_tuple(candidates[0].cuda)
    ]
    raise DriverTooOld(
        f"NVIDIA driver {driver} is too old for vLLM {version} ({options}). Fix: upgrade the "
        f"driver with deploys/gpu.py (Versions(driver_branch=...) one of {', '.join(newer)}), or "
        "pin a vLLM release whose builds support this driver (Versions(vllm=...), see "
        "servekit/catalog/versions.toml)"
    )


def _python_ok(version: str, spec: str) -> bool:
    """Whether Python `version` ('3.11.2') satisfies a catalog range ('>=3.11,<3.15')."""
    have = catalog.version_tuple(version)[:2]
    for part in spec.split(","):
        part = part.strip()
        for op in (">=", "<=", "==", "<", ">"):
            if part.startswith(op):
                want = catalog.version_tuple(part[len(op) :])[:2]
                ok = {
                    ">=": have >= want,
                    "<=": have <= want,
                    "==": have == want,
                    "<": have < want,
                    ">": have > want,
                }[op]
                if not ok:
                    return False
                break
    return True


@dataclass(frozen=True)
class HostWork:
    """What servekit manages on one host, derived from its plan."""

    plan: HostPlan
    version: str
    venv: str
    requirements: tuple[str, ...]
    weights: tuple[WeightsLocation, ...]
    tools: tuple[str, ...]

    @property
    def servers(self) -> list[VllmInstance]:
        return [i for i in self.plan.vllm if i.role == "server"]

    @property
    def netrc(self) -> str | None:
        """The root-only netrc uv and pip read mirror logins from (NETRC), if the fleet has any."""
        return NETRC_FILE if self.plan.sources.mirror_credentials else None

    @property
    def processes(self) -> list[VllmInstance]:
        """Instances with a vLLM unit here (a Ray worker node runs Ray only)."""
        return [i for i in self.plan.vllm if i.role != "ray-worker"]

    @property
    def ray(self) -> list[VllmInstance]:
        return [i for i in self.plan.vllm if uses_ray(i)]

    @property
    def waves(self) -> int:
        return max((i.replica for i in self.plan.vllm), default=0) + 2

    def units(self) -> list[str]:
        names = [f"{i.unit}.service" for i in self.processes]
        names += [f"{ray_unit_name(i)}.service" for i in self.ray]
        return [*names, f"{FIREWALL_UNIT}.service"]

    def health_url(self, instance: VllmInstance) -> str:
        address = instance.bind_address
        if address in ("0.0.0.0", ""):
            address = "127.0.0.1"
        return f"http://{address}:{instance.port}/health"

    def spec(self) -> dict[str, Any]:
        """What `inspect_host.py` reports for this host (no secrets in here)."""
        files = [f.path for f in render_host(self.plan)]
        paths = [d[0] for d in DIRECTORIES] + files + [CURRENT_LINK, PREVIOUS_LINK]
        paths += [w.marker for w in self.weights if w.marker]
        paths += [f"{w.directory}/config.json" for w in self.weights if w.kind == "local"]
        paths += [f"{ROLLBACK_DIR}/{i.unit}" for i in self.processes]
        return {
            "packages": list(APT_PACKAGES),
            "user": VLLM_USER,
            "paths": sorted(set(paths)),
            "read": [f"{self.venv}/{VENV_MARKER}", f"{TOOLS_VENV}/{VENV_MARKER}", PROC_DEVICES],
            "globs": [
                f"{UNIT_DIR}/vllm-*.service",
                f"{UNIT_DIR}/ray-*.service",
                f"{VLLM_VENVS}/*/{VENV_MARKER}",
            ],
            "run": {"uv": f"{pyenv.uv_binary()} --version 2>/dev/null"},
            "units": self.units(),
            "health": {i.unit: self.health_url(i) for i in self.servers},
            "interfaces": any(i.nnodes > 1 for i in self.plan.vllm),
        }


def host_work(plan: HostPlan) -> HostWork:
    version = plan.versions.vllm
    requirements = [f"vllm=={version}"]
    if any(uses_ray(i) for i in plan.vllm):
        requirements.append(f"ray=={catalog.tool_version('ray')}")
    locations: dict[str, WeightsLocation] = {}
    for instance in plan.vllm:
        location = locate(plan.sources.weights, instance.checkpoint, instance.revision)
        locations.setdefault(location.description, location)
    kinds = {w.kind for w in locations.values()}
    tools = []
    if "huggingface" in kinds:
        tools.append(f"huggingface_hub=={catalog.tool_version('huggingface_hub')}")
    if "s3" in kinds:
        tools.append(f"boto3=={catalog.tool_version('boto3')}")
    return HostWork(
        plan=plan,
        version=version,
        venv=f"{VLLM_VENVS}/{version}",
        requirements=tuple(requirements),
        weights=tuple(locations.values()),
        tools=tuple(tools),
    )


def desired_files(work: HostWork, state: dict[str, Any]) -> dict[str, RenderedFile]:
    """Every file of the host, secrets filled in, interfaces and the GPU device groups the
    driver registers (/proc/devices) from the host's state."""
    groups = char_device_groups(state["read"].get(PROC_DEVICES))
    facts = HostFacts(
        interfaces=state.get("interfaces") or {},
        char_devices=None if groups is None else tuple(groups),
    )
    return {f.path: f for f in render_host(work.plan, secret=read_secret, facts=facts)}


def instance_files(work: HostWork, instance: VllmInstance) -> list[str]:
    paths = vllm_paths(work.plan, instance)
    return [paths["config_file"], paths["env_file"], paths["unit_file"]]


# --- operations ---------------------------------------------------------------------------------


@operation()
def packages(work: HostWork) -> Commands:
    """
    Install the Debian packages the deploy needs (apt lists refreshed only when one is missing).

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    installed = state.get("packages") or {}
    missing = [name for name in APT_PACKAGES if not installed.get(name)]
    if not missing:
        host.noop(f"packages {', '.join(APT_PACKAGES)} are installed")
        return
    yield (
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
        "apt-get install -y -q --no-install-recommends " + " ".join(missing)
    )
    stale()


@operation()
def service_user(work: HostWork) -> Commands:
    """
    Create the `vllm` system user and the directories it owns (caches, configs, venvs).

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    commands = []
    if not state.get("user"):
        useradd = ["useradd", "--system", "--gid", VLLM_USER, "--home-dir", VLLM_HOME]
        useradd += ["--no-create-home", "--shell", "/usr/sbin/nologin", VLLM_USER]
        commands += [
            f"(getent group {q(VLLM_USER)} >/dev/null || groupadd --system {q(VLLM_USER)})",
            shell.join(useradd),
        ]
    for path, user, group, mode in DIRECTORIES:
        current = state["paths"].get(path)
        if (
            not current
            or current.get("type") != "dir"
            or (current.get("user"), current.get("group"), current.get("mode"))
            != (user, group, mode)
        ):
            commands.append(
                shell.join(["install", "-d", "-o", user, "-g", group, "-m", mode, path])
            )
    if not commands:
        host.noop(f"user {VLLM_USER} and its directories exist")
        return
    yield " && ".join(commands)
    stale()


@operation()
def uv_tool(work: HostWork) -> Commands:
    """
    Install uv (pinned in the versions catalog) from the fleet's package index.

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    _code, output = state["run"].get("uv", [1, ""])
    if output.split()[1:2] == [pyenv.UV_VERSION]:
        host.noop(f"uv {pyenv.UV_VERSION} is installed")
        return
    yield pyenv.bootstrap_uv(work.plan.sources.python_index, netrc=work.netrc)
    stale()


def _venv_python(state: dict[str, Any], version: str) -> tuple[str, list[str]]:
    """The interpreter for a vLLM venv: the host's python3 when the release supports it,
    else a uv-managed CPython 3.12 (downloaded by uv)."""
    release = catalog.vllm_release(version)
    if state.get("python") and _python_ok(str(state["python"]), release.python):
        return "python3", ["--no-managed-python"]
    return "3.12", ["--managed-python"]


@operation()
def vllm_venv(work: HostWork) -> Commands:
    """
    Build the venv of the pinned vLLM version beside any older one, with the CUDA build the
    host's driver runs; add missing packages (Ray) to a complete one.

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    marker = state["read"].get(f"{work.venv}/{VENV_MARKER}")
    installed = json.loads(marker) if marker else None
    wanted = list(work.requirements)
    sources = work.plan.sources
    if installed and installed.get("requirements") == wanted:
        host.noop(f"vLLM {work.version} venv is complete")
        return
    uv = pyenv.uv_binary()
    if installed and installed.get("vllm") == work.version:
        build = Build(**installed["build"])
        install = pyenv.install_packages(
            work.venv,
            wanted,
            build.index_url,
            uv,
            extra_index_urls=build.extra_index_urls,
            index_strategy=build.index_strategy,
            quiet=False,
            netrc=work.netrc,
        )
        record = {**installed, "requirements": wanted}
        yield streamed(_with_marker(install, work.venv, record))
        stale()
        return
    smi = host.get_fact(NvidiaGpus)
    if smi["state"] != "ok":
        yield failure(
            f"servekit: {host.name}: no working NVIDIA driver ({smi['state']}: {smi['message']}); "
            "vLLM needs one. Fix: run deploys/gpu.py on this host first "
            "(pyinfra INVENTORY deploys/gpu.py)"
        )
        return
    names = [gpu["name"] for gpu in smi["gpus"]]
    driver = str(smi["gpus"][0]["driver_version"])
    needed = max((max(i.gpu_indices, default=-1) + 1 for i in work.plan.vllm), default=0)
    if len(names) < needed:
        yield failure(
            f"servekit: {host.name}: the plan uses {needed} GPUs, nvidia-smi lists "
            f"{len(names)} ({', '.join(names)}). Fix: correct the Gpu(count=...) of this machine "
            "in the inventory, or the GPUs (see nvidia-smi)"
        )
        return
    try:
        build = choose_build(work.version, sources, driver)
    except DriverTooOld as error:
        yield failure(f"servekit: {host.name}: {error}")
        return
    python, python_args = _venv_python(state, work.version)
    create = shell.join([uv, "venv", "--quiet", "--python", python, *python_args, work.venv])
    install = pyenv.install_packages(
        work.venv,
        wanted,
        build.index_url,
        uv,
        extra_index_urls=build.extra_index_urls,
        index_strategy=build.index_strategy,
        quiet=False,
        netrc=work.netrc,
    )
    record = {
        "vllm": work.version,
        "requirements": wanted,
        "driver": driver,
        "build": {
            "cuda": build.cuda,
            "min_driver": build.min_driver,
            "source": build.source,
            "unconfirmed": build.unconfirmed,
            "index_url": build.index_url,
            "extra_index_urls": list(build.extra_index_urls),
            "index_strategy": build.index_strategy,
        },
    }
    what = f"vLLM {work.version}: {build.describe()}, driver {driver}"
    banner = f"echo {q(what + ', from ' + build.index_url)}"
    script = " && ".join([banner, f"rm -rf {q(work.venv)}", create, install])
    _rebuilt.add(run_key())
    yield streamed(_with_marker(script, work.venv, record))
    stale()


_rebuilt: set[tuple[int, str]] = set()


def _with_marker(command: str, venv: str, record: dict[str, Any]) -> StringCommand:
    """`command`, then the venv's marker (written last: a venv without it is incomplete)."""
    text = json.dumps(record, sort_keys=True)
    marker = q(f"{venv}/{VENV_MARKER}")
    return StringCommand(f"{command} && printf '%s\\n' {q(text)} > {marker}")


@operation()
def tools_venv(work: HostWork) -> Commands:
    """
    Build the venv of the weights downloaders (huggingface_hub, boto3), apart from vLLM's.

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    marker = state["read"].get(f"{TOOLS_VENV}/{VENV_MARKER}")
    installed = json.loads(marker) if marker else None
    wanted = list(work.tools)
    if installed and installed.get("requirements") == wanted:
        host.noop("weights tools are installed")
        return
    uv = pyenv.uv_binary()
    index = work.plan.sources.python_index
    python, python_args = "python3", ["--no-managed-python"]
    if not state.get("python"):
        python, python_args = "3.12", ["--managed-python"]
    create = shell.join([uv, "venv", "--quiet", "--python", python, *python_args, TOOLS_VENV])
    install = pyenv.install_packages(TOOLS_VENV, wanted, index, uv, netrc=work.netrc)
    script = " && ".join([f"rm -rf {q(TOOLS_VENV)}", create, install])
    yield _with_marker(script, TOOLS_VENV, {"requirements": wanted})
    stale()


def _weights_job(work: HostWork, location: WeightsLocation) -> dict[str, Any]:
    """What `fetch_weights.py` needs, secrets included (it travels on standard input)."""
    source = work.plan.sources.weights
    job: dict[str, Any] = {
        "kind": location.kind,
        "checkpoint": location.checkpoint,
        "revision": location.revision,
        "marker": location.marker,
    }
    if isinstance(source, HfWeights):
        job["hf"] = {
            "endpoint": source.endpoint,
            "cache_dir": f"{HF_HOME}/hub",
            "token": read_secret(source.token) if source.token else None,
        }
    elif isinstance(source, S3Weights):
        credentials = source.credentials
        keys = read_secret_lines(credentials) if credentials else []
        if credentials and len(keys) < 2:
            raise SecretError(
                f"S3 credentials ({credentials.describe()}) need two lines: the access "
                "key id, then the secret access key"
            )
        job["s3"] = {
            "bucket": source.bucket,
            "prefix": s3_prefix(source, location.checkpoint),
            "dest": location.directory,
            "region": source.region,
            "endpoint_url": source.endpoint_url,
            "access_key_id": keys[0] if keys else None,
            "secret_access_key": keys[1] if keys else None,
        }
    return job


@operation()
def weights(work: HostWork, location: WeightsLocation) -> Commands:
    """
    Download a checkpoint as the service user into the cache before anything starts (skipped
    when complete), or check a local path holds it.

    + work: the host's plan and derived paths
    + location: the checkpoint and where it goes
    """
    state = view(work.spec())
    if location.kind == "local":
        config = f"{location.directory}/config.json"
        if (state["paths"].get(config) or {}).get("type") == "file":
            host.noop(f"{location.description} is at {location.directory}")
            return
        yield failure(
            f"servekit: {host.name}: weights of {location.checkpoint} not found: {config} is "
            "missing. Fix: put the checkpoint there (a local path source is read in place, "
            "never downloaded), or mount the share that holds it"
        )
        return
    assert location.marker is not None
    if (state["paths"].get(location.marker) or {}).get("type") == "file":
        host.noop(f"{location.description} is downloaded")
        return
    try:
        job = _weights_job(work, location)
    except SecretError as error:
        yield failure(f"servekit: {host.name}: {error}")
        return
    command = python_command("fetch_weights", python=f"{TOOLS_VENV}/bin/python")
    as_user = shell.join(
        ["runuser", "-u", VLLM_USER, "--", "env", f"HOME={VLLM_HOME}", f"HF_HOME={HF_HOME}"]
    )
    yield streamed(StringCommand(as_user, command), stdin=stdin_json(job))
    stale()


def _units_state(state: dict[str, Any], unit: str) -> dict[str, str]:
    units: dict[str, dict[str, str]] = state.get("units") or {}
    return units.get(f"{unit}.service", {})


def _active(unit_state: dict[str, str]) -> bool:
    return unit_state.get("ActiveState") in ("active", "reloading")


_ray_restarted: set[tuple[int, str]] = set()


@operation()
def ray_nodes(work: HostWork, head: bool) -> Commands:
    """
    Write and (re)start this host's Ray node units (heads before workers), each until it stays
    up.

    + work: the host's plan and derived paths
    + head: the head nodes (True) or the worker nodes (False)
    """
    state = view(work.spec())
    desired = desired_files(work, state)
    groups, jobs = [], []
    for instance in work.ray:
        if (instance.role == "server") != head:
            continue
        unit = ray_unit_name(instance)
        path = vllm_paths(work.plan, instance)["ray_unit_file"]
        changed = differs(desired[path], state["paths"].get(path))
        if changed:
            groups.append({"files": [file_entry(desired[path])], "backup": None})
        if changed or not _active(_units_state(state, unit)):
            jobs.append({"unit": f"{unit}.service", "action": "restart", "enable": True,
                         "url": None, "timeout": WORKER_READY_S})  # fmt: skip
    if not jobs:
        host.noop("Ray nodes are running")
        return
    if groups:
        yield apply_files({"groups": groups, "daemon_reload": True})
    yield streamed(python_command("wait_ready"), stdin=stdin_json({"jobs": jobs}))
    _ray_restarted.add(run_key())
    stale()


@operation()
def ray_cluster(work: HostWork) -> Commands:
    """
    On a Ray head: wait until `ray status` lists every node of the replica, before vLLM starts.

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    heads = [i for i in work.ray if i.role == "server"]
    waits = [
        i
        for i in heads
        if run_key() in _ray_restarted or (state.get("health") or {}).get(i.unit) != 200
    ]
    if not waits:
        host.noop("Ray clusters are complete")
        return
    for instance in waits:
        address = f"{instance.head_address}:{RAY_PORT}"
        yield streamed(
            python_command(
                "ray_wait",
                f"{work.venv}/bin/ray",
                address,
                str(instance.nnodes),
                str(RAY_READY_S),
                python=f"{work.venv}/bin/python",
            )
        )


@operation()
def prune(work: HostWork) -> Commands:
    """
    Stop and remove vLLM and Ray units servekit wrote earlier that the plan no longer has (a
    model moved away, a replica count lowered), with their configs.

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    wanted = set(work.units())
    stale_units = [
        path.rsplit("/", 1)[-1]
        for path, first_line in (state.get("globs") or {}).items()
        if path.startswith(f"{UNIT_DIR}/")
        and first_line
        and SERVEKIT_MARK in first_line
        and path.rsplit("/", 1)[-1] not in wanted
    ]
    if not stale_units:
        host.noop("no units to remove")
        return
    commands = []
    for unit in stale_units:
        name = unit.removesuffix(".service")
        files = [f"{UNIT_DIR}/{unit}"]
        if name.startswith("vllm-"):
            base = f"{VLLM_CONFIG_DIR}/{name.removeprefix('vllm-')}"
            files += [f"{base}.yaml", f"{base}.env", f"{ROLLBACK_DIR}/{name}"]
        commands.append(
            f"systemctl disable --now {q(unit)} >/dev/null 2>&1; "
            f"rm -rf {' '.join(q(f) for f in files)}"
        )
    commands.append("systemctl daemon-reload")
    yield "; ".join(commands)
    stale()


@operation()
def classify(work: HostWork) -> Commands:
    """
    Record what each vLLM process on this host needs (nothing, a start, a rolling restart).

    + work: the host's plan and derived paths
    """
    state = view(work.spec())
    desired = desired_files(work, state)
    rollout = current()
    rebuilt = run_key() in _rebuilt
    for instance in work.processes:
        files_differ = any(
            differs(desired[p], state["paths"].get(p)) for p in instance_files(work, instance)
        )
        unit_state = _units_state(state, instance.unit)
        active = _active(unit_state) and unit_state.get("SubState") != "auto-restart"
        enabled = unit_state.get("UnitFileState") == "enabled"
        status: Status
        if (files_differ or rebuilt) and active:
            status = "changed"
        elif files_differ or not active or not enabled:
            status = "fresh" if files_differ else "down"
        elif instance.role == "server" and (state.get("health") or {}).get(instance.unit) != 200:
            status = "loading"
        else:
            status = "ok"
        rollout.add(
            Process(host.name, instance.unit, instance.serve, instance.replica, instance.role,
                    status)
        )  # fmt: skip
    return
    yield  # an operation: nothing to run


def _mine(work: HostWork, wave: int) -> list[tuple[VllmInstance, Process]]:
    """This host's processes in replicas of `wave`."""
    rollout = current()
    result = []
    for instance in work.processes:
        replica = rollout.replicas.get((instance.serve, instance.replica))
        if replica is None or replica.wave != wave:
            continue
        for process in replica.processes:
            if (process.host, process.unit) == (host.name, instance.unit):
                result.append((instance, process))
    return result


@operation()
def stage(work: HostWork, wave: int) -> Commands:
    """
    Write the new files of this wave's processes, keeping the previous ones of running
    processes for a rollback (wave 0 starts what is not running; wave r + 1 rolls replica r).

    + work: the host's plan and derived paths
    + wave: which wave
    """
    rollout = current()
    mine = _mine(work, wave)
    if not mine:
        host.noop(f"nothing in wave {wave}")
        return
    if wave > 0 and rollout.stopped_by:
        for instance, _process in mine:
            rollout.report(
                host.name,
                f"{instance.unit}: not rolled out (the rollout stopped when "
                f"{rollout.stopped_by} failed); it keeps running its previous configuration",
            )
        host.noop("rollout stopped")
        return
    state = view(work.spec())
    desired = desired_files(work, state)
    groups = []
    for instance, process in mine:
        process.staged = True
        files = [
            desired[p]
            for p in instance_files(work, instance)
            if differs(desired[p], state["paths"].get(p))
        ]
        if files:
            backup = f"{ROLLBACK_DIR}/{instance.unit}" if process.status == "changed" else None
            groups.append({"files": [file_entry(f) for f in files], "backup": backup})
    if not groups:
        host.noop("files are current")
        return
    yield apply_files({"groups": groups, "daemon_reload": True})
    stale()


def _failure_lines(output: list[str], unit: str) -> str:
    """What `wait_ready.py` said about `unit`'s failure (its journal was shown as it ran)."""
    said = [line.strip() for line in output if line.strip().startswith(f"{unit}: FAILED")]
    return "\n".join(said) or "it did not become ready (see the output above)"


def _jobs(work: HostWork, processes: list[tuple[VllmInstance, Process]]) -> list[dict[str, Any]]:
    jobs = []
    for instance, process in processes:
        action = None if process.status in ("ok", "loading") else "restart"
        if process.status == "ok" and instance.role != "server":
            action = None
        server = instance.role == "server"
        jobs.append(
            {
                "unit": f"{instance.unit}.service",
                "action": action,
                "enable": True,
                "url": work.health_url(instance) if server else None,
                "timeout": instance.ready_timeout_s if server else WORKER_READY_S,
            }
        )
    return jobs


def _restart(work: HostWork, wave: int, servers: bool) -> Commands:
    rollout = current()
    mine = [(i, p) for i, p in _mine(work, wave) if p.staged and (i.role == "server") == servers]
    if not mine:
        host.noop(f"no {'servers' if servers else 'workers'} to start in wave {wave}")
        return
    jobs = _jobs(work, mine)
    if all(job["action"] is None for job in jobs) and not servers:
        host.noop("workers are running")
        return
    output: list[str] = []
    command = python_command("wait_ready")
    if wave == 0:
        yield streamed(command, stdin=stdin_json({"jobs": jobs}), sink=output)
        return
    outcome: dict[str, bool] = {}
    yield streamed(command, stdin=stdin_json({"jobs": jobs}), sink=output, outcome=outcome)
    if not outcome.get("ok"):
        for instance, _process in mine:
            replica = rollout.replica_of(instance.serve, instance.replica)
            replica.failed = _failure_lines(output, f"{instance.unit}.service")
            rollout.stopped_by = rollout.stopped_by or replica.name
    stale()


@operation()
def start_workers(work: HostWork, wave: int) -> Commands:
    """
    (Re)start this wave's headless worker processes: a replica's workers run before its head.

    + work: the host's plan and derived paths
    + wave: which wave
    """
    yield from _restart(work, wave, servers=False)


@operation()
def start_servers(work: HostWork, wave: int) -> Commands:
    """
    (Re)start this wave's API servers and wait for `/health` (bounded by the model's size); in a
    rolling wave a failure is recorded for the rollback instead of stopping the host here.

    + work: the host's plan and derived paths
    + wave: which wave
    """
    yield from _restart(work, wave, servers=True)


@operation()
def roll_back(work: HostWork, wave: int) -> Commands:
    """
    Return the processes of a replica that failed in this wave to their previous venv and
    files, restart them and wait until they answer again.

    + work: the host's plan and derived paths
    + wave: which wave
    """
    rollout = current()
    mine = [
        (i, p)
        for i, p in _mine(work, wave)
        if p.staged and rollout.replica_of(i.serve, i.replica).failed
    ]
    if wave == 0 or not mine:
        host.noop("nothing to roll back")
        return
    state = view(work.spec())
    restore = [
        f"{ROLLBACK_DIR}/{i.unit}"
        for i, _p in mine
        if (state["paths"].get(f"{ROLLBACK_DIR}/{i.unit}") or {}).get("type") == "dir"
    ]
    yield apply_files({"restore": restore, "daemon_reload": True})
    jobs = _jobs(work, [(i, Process(p.host, p.unit, p.serve, p.replica, p.role, "changed"))
                        for i, p in mine])  # fmt: skip
    outcome: dict[str, bool] = {}
    output: list[str] = []
    yield streamed(
        python_command("wait_ready"), stdin=stdin_json({"jobs": jobs}), sink=output,
        outcome=outcome,
    )  # fmt: skip
    for instance, _process in mine:
        replica = rollout.replica_of(instance.serve, instance.replica)
        replica.rolled_back = (
            "ok" if outcome.get("ok") else _failure_lines(output, f"{instance.unit}.service")
        )
    stale()


@operation()
def finish(work: HostWork) -> Commands:
    """
    Point `current` at the venv the host runs (and `previous` at the one before, kept; older
    venvs are removed), forget rollback copies, and fail the host with a report if one of its
    replicas failed to roll out.

    + work: the host's plan and derived paths
    """
    rollout = current()
    state = view(work.spec())
    failed, clean = [], []
    for instance in work.processes:
        replica = rollout.replicas.get((instance.serve, instance.replica))
        if replica is not None and replica.failed:
            failed.append((instance, replica))
        elif (state["paths"].get(f"{ROLLBACK_DIR}/{instance.unit}") or {}).get("type") == "dir":
            clean.append(f"{ROLLBACK_DIR}/{instance.unit}")
    skipped = rollout.reports.get(host.name, [])
    for line in skipped:
        logger.warning(f"{host.name}: {line}")
    link = (state["paths"].get(CURRENT_LINK) or {}).get("target")
    previous = (state["paths"].get(PREVIOUS_LINK) or {}).get("target")
    settled = not failed and not skipped
    relink = settled and link != work.venv
    if relink and link:
        previous = link
    keep = {work.venv, previous}
    venvs = [
        path.removesuffix(f"/{VENV_MARKER}")
        for path in (state.get("globs") or {})
        if path.startswith(f"{VLLM_VENVS}/") and path.endswith(VENV_MARKER)
    ]
    prune = [v for v in venvs if settled and v not in keep]
    if not (clean or relink or failed or prune):
        host.noop("rollout complete")
        return
    if clean:
        yield apply_files({"remove": clean})
    if relink:
        if link:
            yield shell.join(["ln", "-sfn", link, PREVIOUS_LINK])
        yield shell.join(["ln", "-sfn", work.venv, CURRENT_LINK])
    if prune:
        # every unit runs `current` now; `previous` stays for a manual way back
        yield "rm -rf " + " ".join(q(v) for v in prune)
    stale()
    if failed:
        lines = []
        for instance, replica in failed:
            back = (
                "rolled back to its previous venv and configuration, and answering again"
                if replica.rolled_back == "ok"
                else f"the rollback FAILED too:\n{replica.rolled_back}"
            )
            lines.append(
                f"{instance.unit} ({replica.name}): the new version or configuration did not "
                f"become healthy ({replica.failed}); {back}."
            )
        report = "\n".join(lines)
        yield failure(
            f"servekit: {host.name}: rollout stopped.\n{report}\nFix the cause (the journal "
            "lines printed above), then run the deploy again; replicas not rolled yet keep "
            "serving their previous version"
        )


# --- the deploy ---------------------------------------------------------------------------------


@deploy("vLLM")
def vllm_host() -> None:
    """Converge this host's vLLM processes from its servekit plan (nothing without one)."""
    data = host.data.get("servekit")
    if data is None:
        logger.warning(f"{host.name}: no servekit plan in host data; skipping vLLM")
        return
    plan = HostPlan.from_host_data(data)
    if not plan.vllm:
        return
    work = host_work(plan)
    try:
        render_host(plan, secret=read_secret)
    except SecretError as error:
        problem(name="Read the fleet's secrets", message=str(error))
        return
    packages(name="Install Debian packages", work=work)
    service_user(name="Create the vllm user and directories", work=work)
    if mirror_login_files(plan.sources, [(NETRC_FILE, "netrc")]) is None:
        return
    uv_tool(name="Install uv", work=work)
    vllm_venv(name="Install the vLLM venv", work=work)
    if work.tools:
        tools_venv(name="Install the weights tools", work=work)
    for location in cast(Any, host).loop(work.weights):
        weights(name="Fetch the weights", work=work, location=location)
    firewall_ops(plan, spec=work.spec())
    if work.ray:
        ray_nodes(name="Start the Ray head", work=work, head=True)
        ray_nodes(name="Start the Ray workers", work=work, head=False)
        ray_cluster(name="Wait for the Ray cluster", work=work)
    prune(name="Remove units no longer planned", work=work)
    classify(name="Inspect the vLLM processes", work=work)
    for wave in cast(Any, host).loop(range(work.waves)):
        stage(name=f"Write vLLM files (wave {wave})", work=work, wave=wave)
        start_workers(name=f"Start vLLM workers (wave {wave})", work=work, wave=wave)
        start_servers(name=f"Start vLLM servers (wave {wave})", work=work, wave=wave)
        roll_back(name=f"Roll back failures (wave {wave})", work=work, wave=wave)
    finish(name="Finish the vLLM rollout", work=work)


__all__ = ["FIREWALL_RULES", "vllm_host"]
