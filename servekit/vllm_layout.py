"""Where vLLM lives on a host: every path, the service account and the directories it owns.

One object answers "which file is this?" for the deploy, the renderer, the host-state reader and
the pruning of units a plan no longer has, so no path is built by hand twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from servekit.hostplan import VllmInstance, ray_unit, vllm_instance_name

Directory = tuple[str, str, str, str]
"""(path, owner, group, mode) of a directory the service needs."""


@dataclass(frozen=True)
class VllmLayout:
    """vLLM's paths on a host (the defaults are servekit's layout)."""

    user: str = "vllm"
    """The account vLLM and Ray run as (the vLLM deploy creates it)."""
    home: str = "/var/lib/vllm"
    config_dir: str = "/etc/vllm"
    root: str = "/opt/vllm"
    tools_venv: str = "/opt/servekit/tools"
    rollback_dir: str = "/var/lib/servekit/rollback"
    unit_dir: str = "/etc/systemd/system"
    venv_marker: str = ".servekit-install.json"
    """Written last in a venv: a venv without it is incomplete."""
    unit_mark: str = "Written by servekit."
    """The first line of every unit servekit writes (so pruning touches only its own)."""

    @property
    def venvs(self) -> str:
        return f"{self.root}/venvs"

    @property
    def current_link(self) -> str:
        return f"{self.root}/current"

    @property
    def previous_link(self) -> str:
        return f"{self.root}/previous"

    @property
    def hf_home(self) -> str:
        return f"{self.home}/huggingface"

    @property
    def hf_hub(self) -> str:
        """The Hugging Face Hub cache (`$HF_HOME/hub`) vLLM reads offline."""
        return f"{self.hf_home}/hub"

    @property
    def vllm_cache(self) -> str:
        return f"{self.home}/cache/vllm"

    @property
    def triton_cache(self) -> str:
        return f"{self.home}/cache/triton"

    @property
    def models_dir(self) -> str:
        """Checkpoints copied from S3."""
        return f"{self.home}/models"

    @property
    def markers_dir(self) -> str:
        """Markers of completed downloads."""
        return f"{self.home}/weights"

    @property
    def ray_temp_dir(self) -> str:
        return f"{self.home}/ray"

    def venv(self, version: str) -> str:
        """The virtualenv of one vLLM release."""
        return f"{self.venvs}/{version}"

    def venv_marker_of(self, venv: str) -> str:
        return f"{venv}/{self.venv_marker}"

    def managed_globs(self) -> list[str]:
        """Where units and venvs servekit may have written earlier are found (for pruning)."""
        return [
            f"{self.unit_dir}/vllm-*.service",
            f"{self.unit_dir}/ray-*.service",
            f"{self.venvs}/*/{self.venv_marker}",
        ]

    def config_file(self, instance: VllmInstance) -> str:
        return f"{self.config_dir}/{vllm_instance_name(instance)}.yaml"

    def env_file(self, instance: VllmInstance) -> str:
        return f"{self.config_dir}/{vllm_instance_name(instance)}.env"

    def unit_file(self, instance: VllmInstance) -> str:
        return f"{self.unit_dir}/{instance.unit}.service"

    def ray_unit_file(self, instance: VllmInstance) -> str:
        return f"{self.unit_dir}/{ray_unit(instance)}.service"

    def rollback_copy(self, unit: str) -> str:
        """Where a running process's previous files wait during a rolling restart."""
        return f"{self.rollback_dir}/{unit}"

    def instance_files(self, instance: VllmInstance) -> list[str]:
        """The files of one vLLM process: its config, its env file and its unit."""
        return [self.config_file(instance), self.env_file(instance), self.unit_file(instance)]

    def unit_files(self, unit_file: str) -> list[str]:
        """Every file servekit wrote for a unit (by its unit file name, `vllm-NAME.service` or
        `ray-NAME.service`): what removing a unit the plan no longer has removes."""
        unit = unit_file.removesuffix(".service")
        files = [f"{self.unit_dir}/{unit_file}"]
        if unit.startswith("vllm-"):
            base = f"{self.config_dir}/{unit.removeprefix('vllm-')}"
            files += [f"{base}.yaml", f"{base}.env", self.rollback_copy(unit)]
        return files

    def directories(self) -> tuple[Directory, ...]:
        """Every directory the service needs, with its owner, group and mode."""
        user = self.user
        return (
            (self.home, user, user, "0750"),
            (self.hf_home, user, user, "0750"),
            (f"{self.home}/cache", user, user, "0750"),
            (self.vllm_cache, user, user, "0750"),
            (self.triton_cache, user, user, "0750"),
            (self.models_dir, user, user, "0750"),
            (self.markers_dir, user, user, "0750"),
            (self.config_dir, "root", user, "0750"),
            (self.root, "root", "root", "0755"),
            (self.venvs, "root", "root", "0755"),
            (self.rollback_dir, "root", "root", "0700"),
        )


LAYOUT = VllmLayout()
"""servekit's vLLM layout (the one the deploys use)."""
