"""Where a fleet downloads from (package mirrors, model weights), the pinned versions, and the
GPU setup options."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
)

from servekit import catalog
from servekit.errors import invalid
from servekit.fields import (
    BucketName,
    HostDir,
    KeyPrefix,
    OllamaVersion,
    Region,
    Text,
    Url,
)
from servekit.spec.base import SecretRef, Spec


class HuggingFace(Spec):
    kind: Literal["huggingface"] = "huggingface"
    endpoint: Url = "https://huggingface.co"
    token: SecretRef | None = Field(None, description="needed for gated models")


class S3Bucket(Spec):
    kind: Literal["s3"] = "s3"
    bucket: BucketName
    prefix: KeyPrefix = ""
    region: Region | None = None
    endpoint_url: Url | None = None
    credentials: SecretRef | None = Field(
        None,
        description="two lines: access key id, secret access key (default: the host's own, "
        "e.g. an instance role)",
    )


class LocalPath(Spec):
    kind: Literal["local"] = "local"
    path: HostDir = Field(description="a directory on each host, e.g. an NFS mount")


WeightsSource = Annotated[HuggingFace | S3Bucket | LocalPath, Field(discriminator="kind")]


class Sources(Spec):
    """Where everything is downloaded from: each one can point at a mirror (air-gapped sites)."""

    python_index: Url = "https://pypi.org/simple"
    torch_index: Url = "https://download.pytorch.org/whl"
    vllm_wheels: Url = "https://wheels.vllm.ai"
    nvidia_apt: Url = "https://developer.download.nvidia.com/compute/cuda/repos"
    ollama_releases: Url = "https://github.com/ollama/ollama/releases/download"
    weights: WeightsSource = Field(default_factory=HuggingFace)
    mirror_credentials: SecretRef | None = Field(
        None,
        description="a netrc file (machine HOST login USER password PASS) for mirrors that need a "
        "login; written on hosts only to 0600 files (apt auth.conf.d, a root-only netrc for "
        "uv/pip/curl), never in argv, logs or world-readable files",
    )


class Versions(Spec):
    """Pinned versions; each must be in servekit's versions catalog."""

    vllm: Text = "0.33.0"
    ollama: OllamaVersion = Field(default_factory=lambda: catalog.ollama_versions().default)
    driver_branch: int = Field(default_factory=catalog.default_driver_branch)

    @field_validator("vllm")
    @classmethod
    def _known_vllm(cls, version: str) -> str:
        try:
            catalog.vllm_release(version)
        except catalog.CatalogError as error:
            raise invalid(str(error), "pin a vLLM release listed in versions.toml") from None
        return version

    @field_validator("ollama")
    @classmethod
    def _safe_ollama(cls, version: str) -> str:
        minimum = catalog.ollama_versions().minimum
        if catalog.version_tuple(version) < catalog.version_tuple(minimum):
            raise invalid(
                f"Ollama {version} has known remote vulnerabilities",
                f"pin Ollama {minimum} or newer",
            )
        return version

    @field_validator("driver_branch")
    @classmethod
    def _known_branch(cls, branch: int) -> int:
        if branch not in catalog.driver_branches():
            known = ", ".join(str(b) for b in catalog.driver_branches())
            raise invalid(f"unknown driver branch {branch}", f"use one of {known}")
        return branch


class GpuSetup(Spec):
    """Options for `deploys/gpu.py` beyond the driver branch."""

    cuda_toolkit: str | None = Field(None, pattern=r"^1[23]\.\d$", description="e.g. '12.8'")
    dcgm: bool = False
    reboot: bool = Field(True, description="reboot when the driver changed (never @local)")
    reboot_batch: int = Field(1, ge=1, description="hosts rebooted at a time")
