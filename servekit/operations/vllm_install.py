"""Operations that install vLLM on a host: Debian packages, the service user and its
directories, uv, the vLLM venv (with the CUDA build the driver runs) and the weights tools' venv.

Each reads the host's state once (`view`), does nothing when it matches, and lists what it
would change in a dry run (`announce`).
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit import catalog, pyenv, shell
from servekit.facts.nvidia import NvidiaGpus
from servekit.hostplan import HostPlan
from servekit.operations.common import Commands, failure
from servekit.operations.debian import apt_install_command
from servekit.operations.hoststate import announce, stale, streamed, view
from servekit.operations.runstate import this_host
from servekit.operations.vllm_work import APT_PACKAGES, HostWork, host_work
from servekit.shell import quote as q
from servekit.vllm_builds import Build, DriverTooOld, choose_build, python_satisfies
from servekit.vllm_layout import LAYOUT


@operation()
def packages(plan: HostPlan) -> Commands:
    """
    Install the Debian packages the vLLM deploy needs (apt lists refreshed only when one is
    missing).

    + plan: the host's plan

    **Example:**

    .. code:: python

        packages(name="Install Debian packages", plan=plan)
    """
    state = view(host_work(plan).spec())
    installed = state.get("packages") or {}
    missing = [name for name in APT_PACKAGES if not installed.get(name)]
    if not missing:
        host.noop(f"packages {', '.join(APT_PACKAGES)} are installed")
        return
    announce(f"install the Debian packages {', '.join(missing)}")
    yield apt_install_command(missing)
    stale()


def _missing_directories(state: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The service's directories that are absent or have another owner or mode."""
    result = []
    for path, user, group, mode in LAYOUT.directories():
        current = state["paths"].get(path)
        if (
            not current
            or current.get("type") != "dir"
            or (current.get("user"), current.get("group"), current.get("mode"))
            != (user, group, mode)
        ):
            result.append((path, user, group, mode))
    return result


@operation()
def service_user(plan: HostPlan) -> Commands:
    """
    Create the vLLM service user and the directories it owns (caches, configs, venvs).

    + plan: the host's plan

    **Example:**

    .. code:: python

        service_user(name="Create the vllm user and directories", plan=plan)
    """
    state = view(host_work(plan).spec())
    user = LAYOUT.user
    commands = []
    if not state.get("user"):
        useradd = ["useradd", "--system", "--gid", user, "--home-dir", LAYOUT.home]
        useradd += ["--no-create-home", "--shell", "/usr/sbin/nologin", user]
        commands += [
            f"(getent group {q(user)} >/dev/null || groupadd --system {q(user)})",
            shell.join(useradd),
        ]
    directories = _missing_directories(state)
    for path, owner, group, mode in directories:
        commands.append(shell.join(["install", "-d", "-o", owner, "-g", group, "-m", mode, path]))
    if not commands:
        host.noop(f"user {user} and its directories exist")
        return
    announce(
        *([f"create the user {user}"] if not state.get("user") else []),
        *(f"create {path} ({owner}:{group} {mode})" for path, owner, group, mode in directories),
    )
    yield " && ".join(commands)
    stale()


@operation()
def uv_tool(plan: HostPlan) -> Commands:
    """
    Install uv (pinned in the versions catalog) from the fleet's package index.

    + plan: the host's plan

    **Example:**

    .. code:: python

        uv_tool(name="Install uv", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    _code, output = state["run"].get("uv", [1, ""])
    if output.split()[1:2] == [pyenv.UV_VERSION]:
        host.noop(f"uv {pyenv.UV_VERSION} is installed")
        return
    announce(f"install uv {pyenv.UV_VERSION} in {pyenv.UV_VENV}")
    yield pyenv.bootstrap_uv(plan.sources.python_index, netrc=work.netrc)
    stale()


def _venv_python(state: dict[str, Any], version: str) -> tuple[str, list[str]]:
    """The interpreter for a vLLM venv: the host's python3 when the release supports it,
    else a uv-managed CPython 3.12 (downloaded by uv)."""
    release = catalog.vllm_release(version)
    if state.get("python") and python_satisfies(str(state["python"]), release.python):
        return "python3", ["--no-managed-python"]
    return "3.12", ["--managed-python"]


def _with_marker(command: str, venv: str, record: dict[str, Any]) -> StringCommand:
    """`command`, then the venv's marker (written last: a venv without it is incomplete)."""
    text = json.dumps(record, sort_keys=True)
    marker = q(LAYOUT.venv_marker_of(venv))
    return StringCommand(f"{command} && printf '%s\\n' {q(text)} > {marker}")


def _install(work: HostWork, build: Build) -> str:
    """uv's command that installs the host's requirements into its venv from `build`'s indexes."""
    return pyenv.install_packages(
        work.venv,
        list(work.requirements),
        build.index_url,
        pyenv.uv_binary(),
        extra_index_urls=build.extra_index_urls,
        index_strategy=build.index_strategy,
        quiet=False,
        netrc=work.netrc,
    )


def _driver(work: HostWork) -> tuple[str | None, str]:
    """The host's NVIDIA driver version, or None and why vLLM cannot run here (the fix named)."""
    smi = host.get_fact(NvidiaGpus)
    if smi["state"] != "ok":
        return None, (
            f"no working NVIDIA driver ({smi['state']}: {smi['message']}); vLLM needs one. "
            "Fix: run deploys/gpu.py on this host first (pyinfra INVENTORY deploys/gpu.py)"
        )
    names = [gpu["name"] for gpu in smi["gpus"]]
    needed = max((max(i.gpu_indices, default=-1) + 1 for i in work.plan.vllm), default=0)
    if len(names) < needed:
        return None, (
            f"the plan uses {needed} GPUs, nvidia-smi lists {len(names)} ({', '.join(names)}). "
            "Fix: correct the Gpu(count=...) of this machine in the inventory, or the GPUs "
            "(see nvidia-smi)"
        )
    return str(smi["gpus"][0]["driver_version"]), ""


def _build_record(work: HostWork, build: Build, driver: str) -> dict[str, Any]:
    """What the venv's marker records: the release, its requirements, the driver and the build."""
    return {
        "vllm": work.version,
        "requirements": list(work.requirements),
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


@operation()
def vllm_venv(plan: HostPlan) -> Commands:
    """
    Build the venv of the pinned vLLM version beside any older one, with the CUDA build the
    host's driver runs; add missing packages (Ray) to a complete one.

    + plan: the host's plan

    **Example:**

    .. code:: python

        vllm_venv(name="Install the vLLM venv", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    marker = state["read"].get(LAYOUT.venv_marker_of(work.venv))
    installed = json.loads(marker) if marker else None
    wanted = list(work.requirements)
    if installed and installed.get("requirements") == wanted:
        host.noop(f"vLLM {work.version} venv is complete")
        return
    if installed and installed.get("vllm") == work.version:
        announce(f"add {', '.join(wanted)} to {work.venv}")
        install = _install(work, Build(**installed["build"]))
        yield streamed(_with_marker(install, work.venv, {**installed, "requirements": wanted}))
        stale()
        return
    driver, why_not = _driver(work)
    if driver is None:
        yield failure(f"servekit: {host.name}: {why_not}")
        return
    try:
        build = choose_build(work.version, plan.sources, driver)
    except DriverTooOld as error:
        yield failure(f"servekit: {host.name}: {error}")
        return
    python, python_args = _venv_python(state, work.version)
    uv = pyenv.uv_binary()
    create = shell.join([uv, "venv", "--quiet", "--python", python, *python_args, work.venv])
    what = f"vLLM {work.version}: {build.describe()}, driver {driver}"
    banner = f"echo {q(what + ', from ' + build.index_url)}"
    script = " && ".join([banner, f"rm -rf {q(work.venv)}", create, _install(work, build)])
    this_host().venv_rebuilt = True
    announce(f"build {work.venv} ({what})")
    yield streamed(_with_marker(script, work.venv, _build_record(work, build, driver)))
    stale()


@operation()
def tools_venv(plan: HostPlan) -> Commands:
    """
    Build the venv of the weights downloaders (huggingface_hub, boto3), apart from vLLM's.

    + plan: the host's plan

    **Example:**

    .. code:: python

        tools_venv(name="Install the weights tools", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    venv = LAYOUT.tools_venv
    marker = state["read"].get(LAYOUT.venv_marker_of(venv))
    installed = json.loads(marker) if marker else None
    wanted = list(work.tools)
    if installed and installed.get("requirements") == wanted:
        host.noop("weights tools are installed")
        return
    uv = pyenv.uv_binary()
    python, python_args = "python3", ["--no-managed-python"]
    if not state.get("python"):
        python, python_args = "3.12", ["--managed-python"]
    create = shell.join([uv, "venv", "--quiet", "--python", python, *python_args, venv])
    install = pyenv.install_packages(venv, wanted, plan.sources.python_index, uv, netrc=work.netrc)
    announce(f"build {venv} ({', '.join(wanted)})")
    yield _with_marker(" && ".join([f"rm -rf {q(venv)}", create, install]), venv,
                       {"requirements": wanted})  # fmt: skip
    stale()
