"""Ollama's service files from a host's plan: on Linux servekit's unit and its settings drop-in,
on macOS the LaunchAgent plist. `servekit render` and the Ollama deploy both use them."""

from __future__ import annotations

from typing import Protocol

from servekit import systemd
from servekit.firewall import ollama_port
from servekit.hostplan import HostPlan
from servekit.ollama.layout import (
    DROPIN_FILE,
    HOME_PLACEHOLDER,
    LAUNCHD_LABEL,
    LINUX_BINARY,
    SERVICE_HOME,
    SERVICE_USER,
    UNIT,
    UNIT_FILE,
    MacLayout,
    expand_home,
)
from servekit.templating import RenderedFile, render_template


class OllamaHostFacts(Protocol):
    """What the files need from the host (`servekit.render.HostFacts` has it)."""

    @property
    def home(self) -> str | None: ...

    @property
    def char_devices(self) -> tuple[str, ...] | None: ...

    def gpu_device_groups(self) -> list[str]: ...


def ollama_files(plan: HostPlan, facts: OllamaHostFacts) -> list[RenderedFile]:
    """Ollama's service files: on Linux our unit and its settings drop-in, on macOS the
    LaunchAgent plist (with `~` resolved to the user's home from the facts)."""
    settings = plan.ollama
    if settings is None:
        return []
    if plan.os == "macos":
        home = facts.home or HOME_PLACEHOLDER
        layout = MacLayout(home, settings.version)
        env = {key: expand_home(value, home) for key, value in settings.env.items()}
        plist = render_template(
            "ollama.plist.j2",
            label=LAUNCHD_LABEL,
            binary=layout.binary,
            environment=dict(sorted(env.items())),
            home=home,
            log=layout.log,
        )
        owner = home.rstrip("/").rsplit("/", 1)[-1]
        return [RenderedFile(layout.plist, plist, "0644", owner, "staff")]
    models = settings.env.get("OLLAMA_MODELS", f"{SERVICE_HOME}/models")
    writable = [SERVICE_HOME]
    if not models.startswith(SERVICE_HOME + "/"):
        writable.append(models)
    homes = ("/home/", "/root/", "/run/user/")
    unit = render_template(
        "ollama.service.j2",
        unit=UNIT,
        dropin=DROPIN_FILE,
        fleet=plan.fleet,
        user=SERVICE_USER,
        home=SERVICE_HOME,
        exec_start=[LINUX_BINARY, "serve"],
        sandbox=systemd.ollama_sandbox(
            writable,
            facts.gpu_device_groups(),
            # Models kept under a home directory need it visible (and writable) to the service.
            protect_home="no" if any(f"{p}/".startswith(homes) for p in writable) else "yes",
            note=systemd.devices_note(facts.char_devices),
        ),
        firewall=ollama_port(plan) is not None,
    )
    dropin = render_template(
        "ollama-settings.conf.j2",
        fleet=plan.fleet,
        version=settings.version,
        environment=systemd.environment_lines(settings.env),
    )
    return [
        RenderedFile(UNIT_FILE, unit, "0644"),
        RenderedFile(DROPIN_FILE, dropin, "0644"),
    ]
