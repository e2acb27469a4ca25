"""What a fleet serves: models on engines (`Serve`) and how Ollama runs (`OllamaSettings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from servekit.errors import invalid
from servekit.fields import (
    Address,
    HostDir,
    KeepAlive,
    ModelName,
    Origin,
    Revision,
    Text,
)
from servekit.spec.base import Name, Port, Spec
from servekit.spec.ports import OLLAMA_PORT, VLLM_PORT

Routing = Literal["least-outstanding", "prefix-affinity"]
"""How the gateway picks a replica of a served model (see `Serve.routing`)."""


class Serve(Spec):
    """A model served by an engine on some machines.

    `model` is a catalog name, a Hugging Face id or an Ollama tag. With `engine="vllm"` an Ollama
    tag is mapped to its Hugging Face model and kept as a served name, so clients of the Ollama
    deployment keep working after the move.
    """

    name: Name | None = Field(None, description="names units and routes; default from the model")
    model: ModelName = Field(min_length=1)
    engine: Literal["vllm", "ollama"] = "vllm"
    hosts: list[Text] | None = Field(None, description="machine or node-group names; default all")
    replicas: int | None = Field(None, ge=1, description="default: as many as the hosts hold")
    nodes_per_replica: int = Field(1, ge=1, le=16)
    gpus_per_replica: int | None = Field(None, ge=1, le=16, description="default: a whole node")
    tensor_parallel: int | None = Field(None, ge=1, le=16)
    pipeline_parallel: int | None = Field(None, ge=1, le=16)
    max_model_len: int | None = Field(None, ge=256)
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    quantization: Literal["auto", "none", "fp8", "awq"] = Field(
        "auto", description="auto: only when the model does not fit otherwise"
    )
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    gpu_memory_utilization: float = Field(0.92, gt=0.05, le=0.99)
    max_num_seqs: int | None = Field(None, ge=1)
    served_names: list[ModelName] = Field(
        default_factory=list, description="extra names it answers to"
    )
    port: Port | None = Field(None, description=f"default {VLLM_PORT} (vLLM), {OLLAMA_PORT}")
    revision: Revision | None = Field(None, description="Hugging Face revision (commit) to pin")
    distributed_backend: Literal["mp", "ray"] = "mp"
    routing: Routing = Field(
        "least-outstanding",
        description="how the gateway picks a replica: 'least-outstanding' (fewest requests in "
        "flight) or, for vLLM, 'prefix-affinity' (requests whose prompts start alike go to the "
        "same replica, within a bounded load, so they reuse its prefix cache)",
    )

    @model_validator(mode="after")
    def _engine_rules(self) -> Serve:
        if self.engine == "ollama":
            for field in ("tensor_parallel", "pipeline_parallel", "gpus_per_replica"):
                if getattr(self, field) is not None:
                    raise invalid(
                        f"{field} applies to vLLM only; Ollama places layers itself",
                        f"remove {field}, or use engine='vllm'",
                    )
            if self.nodes_per_replica > 1:
                raise invalid(
                    "Ollama cannot spread one model over several machines",
                    "use engine='vllm' for multi-node, or nodes_per_replica=1",
                )
            if self.quantization in ("fp8", "awq"):
                raise invalid(
                    "Ollama serves the quantization of its tag (GGUF), not fp8/awq",
                    "pick a tag such as 'llama3.1:8b-instruct-q8_0', or use engine='vllm'",
                )
            if self.routing == "prefix-affinity":
                raise invalid(
                    "routing='prefix-affinity' applies to vLLM pools only (it aims at vLLM's "
                    "prefix cache)",
                    "remove routing, or use engine='vllm'",
                )
        if self.distributed_backend == "ray" and self.nodes_per_replica == 1:
            raise invalid(
                "the Ray backend only matters for a replica across several nodes",
                "set nodes_per_replica, or leave distributed_backend='mp'",
            )
        return self

    @property
    def engine_port(self) -> int:
        return self.port or (OLLAMA_PORT if self.engine == "ollama" else VLLM_PORT)


class OllamaSettings(Spec):
    """How Ollama runs on every machine that serves an Ollama model (OLLAMA_* variables)."""

    expose: bool = Field(
        False, description="listen beyond loopback: only allowed behind the fleet's gateway"
    )
    keep_alive: KeepAlive = "5m"
    num_parallel: int = Field(1, ge=1, le=64)
    max_loaded_models: int = Field(0, ge=0)
    flash_attention: bool | None = None
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    context_length: int = Field(0, ge=0, description="0: Ollama picks by VRAM")
    origins: list[Origin] = Field(default_factory=list)
    clients: list[Address] = Field(
        default_factory=list,
        description="addresses (IP or host name) admitted to an exposed Ollama, besides the "
        "gateway and monitoring hosts; names are resolved when the fleet is planned",
    )
    prune: bool = Field(False, description="delete models that are not declared")
    models_dir: HostDir | None = None

    @model_validator(mode="after")
    def _kv_needs_flash(self) -> OllamaSettings:
        if self.kv_cache_type != "f16" and self.flash_attention is False:
            raise invalid(
                f"kv_cache_type={self.kv_cache_type!r} needs flash attention",
                "remove flash_attention=False, or use kv_cache_type='f16'",
            )
        return self
