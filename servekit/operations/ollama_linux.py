"""Ollama on Linux (Debian, Ubuntu; x86_64, arm64), in named steps: check the host, install curl
and zstd, create the `ollama` user (in `render`/`video` where they exist) and its data
directories, install the release, write servekit's hardened unit and its settings drop-in,
restart only when the binary, unit or settings changed, then wait for the API and sync models.

GPU drivers are the GPU deploy's job, never this one's. Changes the system: sudo unless root.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from pyinfra import logger
from pyinfra.context import host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory, File
from pyinfra.facts.server import Arch, Groups, Which
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, server, systemd

from servekit import ollama
from servekit.credentials import NETRC_FILE
from servekit.facts.ollama import DirectoryPath
from servekit.firewall import needs_firewall
from servekit.hostplan import HostPlan, OllamaHost
from servekit.ollama import PathEntry
from servekit.ollama.files import ollama_files
from servekit.operations.common import each, problem
from servekit.operations.credentials import mirror_login_files
from servekit.operations.firewall import firewall_ops
from servekit.operations.gateway_drain import ollama_will_restart
from servekit.operations.ollama import answer_and_sync, release
from servekit.operations.rendered import any_changed, put
from servekit.render import HostFacts
from servekit.shell import poll_until_zero


@dataclass(frozen=True)
class PendingRestart:
    """What is left of an Ollama host's run once its files are in place: a restart (only when
    it was running and something changed), then the API and the models. The deploy runs it in
    the host's rollout wave, between draining and re-enabling it at the gateway."""

    settings: OllamaHost
    sudo: bool
    needed: Callable[[], bool]
    started: Callable[[], bool]


def linux_service(
    plan: HostPlan, settings: OllamaHost, base_url: str, sudo: bool
) -> PendingRestart | None:
    """Every step of an Ollama service on a Linux host up to its restart; None when a step
    stopped the host."""
    arch = supported_host(plan, sudo)
    if arch is None:
        return None
    packages(settings.version, arch, sudo)
    models_dir = data_directory(settings, sudo)
    if models_dir is None:
        return None
    service_user(models_dir, sudo)
    return install_and_start(plan, settings, base_url, sudo)


def supported_host(plan: HostPlan, sudo: bool) -> str | None:
    """The release architecture (Go's name) of a host servekit can run Ollama on, or None
    (after stopping the host with why): apt, systemd, x86_64 or arm64."""
    if not host.get_fact(Which, command="apt-get"):
        problem(
            name="Supported systems",
            message="servekit installs Ollama on Debian and Ubuntu (apt); this host has no apt-get",
        )
        return None
    if not host.get_fact(Directory, path="/run/systemd/system"):
        problem(
            name="Needs systemd",
            message="servekit runs Ollama as a systemd service, and this host was not booted "
            "with systemd (a container, or WSL without systemd=true in /etc/wsl.conf)",
            _sudo=sudo,
        )
        return None
    try:
        arch = ollama.go_arch(host.get_fact(Arch))
    except ollama.ReleaseError as error:
        problem(name="Supported architectures", message=str(error))
        return None
    if plan.gpu_model and plan.gpu_count and not host.get_fact(Which, command="nvidia-smi"):
        logger.warning(
            f"{host.print_prefix}{plan.gpu_model} declared but no NVIDIA driver found: Ollama runs "
            "on the CPU until deploys/gpu.py has installed the driver"
        )
    return arch


def packages(version: str, arch: str, sudo: bool) -> None:
    """curl and CA certificates (and zstd for `.tar.zst` releases), apt's lists refreshed only
    when one is missing."""
    wanted = list(ollama.LINUX_PACKAGES)
    if ollama.asset_name(version, "linux", arch).endswith(".tar.zst"):
        wanted.append("zstd")
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in wanted if p not in installed]
    apt.packages(
        name="Install curl and zstd",
        _sudo=sudo,
        packages=wanted,
        update=bool(missing),
        cache_time=3600,
        no_recommends=True,
    )


def data_directory(settings: OllamaHost, sudo: bool) -> str | None:
    """The models directory, or None (after stopping the host) when it is a system directory or
    the service user cannot reach it; warns about models of an earlier install.sh install."""
    user, home = ollama.SERVICE_USER, ollama.SERVICE_HOME
    groups = gpu_groups()
    models_dir = settings.env.get("OLLAMA_MODELS", f"{home}/models")
    for path in dict.fromkeys([home, models_dir]):
        if reason := ollama.data_dir_problem(path):
            problem(
                name="Ollama data directory",
                _sudo=sudo,
                message=f"refusing ollama.models_dir: {reason}; set OllamaSettings(models_dir=...) "
                "to a directory of its own (/srv/ollama/models)",
            )
            return None
    above: list[PathEntry] = host.get_fact(DirectoryPath, path=models_dir)
    blocked = ollama.untraversable(above, user, [user, *groups])
    if blocked:
        problem(
            name="Ollama data directory",
            _sudo=sudo,
            message=f"the {user} user cannot enter {', '.join(blocked)} on the way to "
            f"{models_dir}: give it o+x (chmod o+x {shlex.join(blocked)}) or choose "
            "another ollama.models_dir",
        )
        return None
    if models_dir != ollama.INSTALL_SH_MODELS and host.get_fact(
        Directory, path=ollama.INSTALL_SH_MODELS
    ):
        logger.warning(
            f"{host.print_prefix}models of an earlier install.sh install are in "
            f"{ollama.INSTALL_SH_MODELS}; this Ollama uses {models_dir}: set "
            "OllamaSettings(models_dir=...) to keep them, or they are pulled again"
        )
    return models_dir


def gpu_groups() -> list[str]:
    """The GPU device groups (`render`, `video`) this host has: the service user joins them."""
    return [g for g in ollama.GPU_GROUPS if g in host.get_fact(Groups)]


def service_user(models_dir: str, sudo: bool) -> None:
    """The `ollama` system user and group, and its home and models directories (0750)."""
    user, home = ollama.SERVICE_USER, ollama.SERVICE_HOME
    server.group(name="Create the ollama group", group=user, system=True, _sudo=sudo)
    server.user(
        name="Create the ollama user",
        _sudo=sudo,
        user=user,
        group=user,
        groups=gpu_groups(),
        home=home,
        shell="/usr/sbin/nologin",
        system=True,
        ensure_home=False,
    )
    for path in each(dict.fromkeys([home, models_dir])):
        files.directory(
            name=f"Create {path}",
            _sudo=sudo,
            path=path,
            user=user,
            group=user,
            mode="750",
            recursive=False,
        )


def install_and_start(
    plan: HostPlan, settings: OllamaHost, base_url: str, sudo: bool
) -> PendingRestart | None:
    """The release, the firewall when exposed, the unit and its drop-in, started if it is not
    running; the restart a change needs is left to `restart_and_sync` (and noted for the
    gateway, which drains this host first)."""
    logins = mirror_login_files(plan.sources, [(NETRC_FILE, "netrc")], sudo=sudo)
    if logins is None:
        return None
    version = settings.version
    installed = release(
        name=f"Install Ollama {version}",
        _sudo=sudo,
        version=version,
        base_url=base_url,
        system="linux",
        machine=host.get_fact(Arch),
        netrc=NETRC_FILE if logins else None,
    )
    if needs_firewall(plan):
        # Exposed beyond loopback: its firewall loads (commit confirmed) before it can start.
        firewall_ops(plan, _sudo=sudo)
    unit_file, dropin_file = ollama_files(plan, HostFacts())
    unit = put(unit_file, "Install ollama.service", owner=True, sudo=sudo)
    dropin = put(dropin_file, "Write the Ollama settings drop-in", owner=True, sudo=sudo)
    systemd.daemon_reload(name="Reload systemd", _if=any_changed(unit, dropin), _sudo=sudo)

    was_running = bool(host.get_fact(SystemdStatus, services=ollama.UNIT).get(ollama.UNIT))
    started = systemd.service(
        name="Start and enable ollama.service",
        _sudo=sudo,
        service=ollama.UNIT,
        running=True,
        enabled=True,
    )
    changed = any_changed(installed, unit, dropin)

    def needed() -> bool:
        return was_running and changed()

    ollama_will_restart(name="Note the restart for the gateway", _if=needed)
    return PendingRestart(settings, sudo, needed, any_changed(started))


def restart_and_sync(pending: PendingRestart) -> None:
    """Restart Ollama after a change, then wait for the API and sync the models."""
    restarted = systemd.service(
        name="Restart Ollama after a change",
        _sudo=pending.sudo,
        service=ollama.UNIT,
        restarted=True,
        _if=pending.needed,
    )
    answer_and_sync(
        pending.settings,
        pending.settings.version,
        pending.sudo,
        f"journalctl -u {ollama.UNIT} -n 30 --no-pager",
        lambda: pending.started() or any_changed(restarted)(),
    )


def retire_service(sudo: bool) -> None:
    """Stop and disable servekit's Ollama service on a Linux host whose plan serves no Ollama
    model any more (the last step of a move to vLLM, after the gateway routes elsewhere). The
    binary, unit and models stay; an Ollama servekit did not install (no servekit drop-in) is
    left alone."""
    if not host.get_fact(File, path=ollama.DROPIN_FILE):
        logger.warning(f"{host.print_prefix}the fleet serves no Ollama model here: nothing to do")
        return
    if host.get_fact(SystemdStatus, services=ollama.UNIT).get(ollama.UNIT):
        server.shell(
            name="Let the requests in flight on Ollama finish",
            _sudo=sudo,
            commands=[requests_in_flight_wait()],
        )
    systemd.service(
        name="Retire ollama.service (no Ollama model planned here)",
        _sudo=sudo,
        service=ollama.UNIT,
        running=False,
        enabled=False,
    )


RETIRE_WAIT_S = 120
"""How long a retiring Ollama gets to finish the answers it is streaming (the gateway's old
worker still holds them after its reload)."""


def requests_in_flight_wait(timeout: int = RETIRE_WAIT_S) -> str:
    """sh: wait (at most `timeout` s) until no client connection to Ollama's port is open
    (`ss`, iproute2); the port from the unit's OLLAMA_HOST (default 11434)."""
    return (
        f"port=$(systemctl show -p Environment --value {ollama.UNIT} | tr ' ' '\\n' "
        "| sed -n 's/^OLLAMA_HOST=.*:\\([0-9][0-9]*\\)$/\\1/p'); port=${port:-11434}; "
        "command -v ss >/dev/null || exit 0; "
        + poll_until_zero(
            'ss -Htn state established "( sport = :$port )" | wc -l',
            timeout,
            f"$n requests still open on Ollama after {int(timeout)} s: stopping it anyway",
        )
    )
