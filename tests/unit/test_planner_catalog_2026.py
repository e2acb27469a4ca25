"""The 2026 catalog models plan offline on the GPUs people pair them with, and their special
architectures (MoE, MXFP4 checkpoints, MLA) are planned the way vLLM loads them."""

from __future__ import annotations

import pytest

from servekit import catalog, planner

PAIRINGS = [
    ("qwen3-8b", "L4", 1),
    ("qwen3-8b", "A10G", 1),
    ("qwen3-8b", "RTX-4090", 1),
    ("deepseek-r1-distill-llama-8b", "RTX-4090", 1),
    ("qwen3-14b", "L40S", 1),
    ("mistral-small-24b-instruct-2501", "L40S", 1),
    ("qwen3-32b", "A100-80GB", 1),
    ("qwen3-32b", "H100", 1),
    ("deepseek-r1-distill-qwen-32b", "H100", 1),
    ("llama-3.3-70b-instruct", "H100", 2),
    ("llama-3.3-70b-instruct", "A100-80GB", 4),
    ("deepseek-r1-distill-llama-70b", "H100", 8),
    ("qwen3-30b-a3b", "H100", 1),
    ("qwen3-235b-a22b", "H100", 8),
    ("qwen3-235b-a22b", "H200", 8),
    ("gpt-oss-20b", "L4", 1),
    ("gpt-oss-120b", "H100", 2),
    ("gpt-oss-120b", "H200", 1),
    ("gpt-oss-120b", "H200", 8),
    ("deepseek-v3", "H200", 8),
    ("gemma-3-27b-it", "H100", 1),
]


@pytest.mark.parametrize(
    ("name", "gpu", "gpus"), PAIRINGS, ids=[f"{m}-{g}x{n}" for m, g, n in PAIRINGS]
)
def test_plans_offline(name: str, gpu: str, gpus: int) -> None:
    model = catalog.find_model(name)
    assert model is not None and model.from_catalog
    plan = planner.plan_vllm(model, catalog.gpu(gpu), gpus)
    assert plan.max_model_len >= planner.MIN_DEFAULT_CONTEXT
    assert plan.max_model_len <= plan.kv_cache_tokens / (1 + plan.kv_tokens_uncertainty)
    assert plan.tight == (plan.kv_cache_tokens < 2 * plan.max_model_len)


def test_moe_memory_counts_every_expert_decode_only_the_active() -> None:
    moe = catalog.models()["qwen3-30b-a3b"]
    plan = planner.plan_vllm(moe, catalog.gpu("H100"), 1)
    assert plan.weights_gib == pytest.approx(2 * moe.params / 2**30, rel=0.01)
    dense_ceiling = catalog.gpu("H100").bandwidth_gbps * 1e9 / (2 * moe.params)
    assert plan.decode_tokens_per_s > 5 * dense_ceiling


def test_mxfp4_checkpoint_served_as_shipped() -> None:
    oss = catalog.models()["gpt-oss-120b"]
    plan = planner.plan_vllm(oss, catalog.gpu("H200"), 1)
    assert (plan.checkpoint, plan.quantization, plan.quantization_flag) == (
        "openai/gpt-oss-120b",
        "mxfp4",
        None,
    )
    assert plan.weights_gib == pytest.approx(oss.loaded_gib)
    assert any("sliding-window" in note for note in plan.notes)


def test_mla_cache_is_one_latent_per_layer_on_every_rank() -> None:
    v3 = catalog.models()["deepseek-v3"]
    plan = planner.plan_vllm(v3, catalog.gpu("H200"), 8)
    assert plan.kv_bytes_per_token == v3.layers * (512 + 64) * 2
    assert planner.kv_bytes_per_token_per_gpu(v3, 8, 1) == plan.kv_bytes_per_token
    assert plan.quantization == "fp8" and plan.quantization_flag is None


def test_mla_model_on_too_few_gpus_names_the_layout_that_fits() -> None:
    with pytest.raises(planner.PlanRefused) as refused:
        planner.plan_vllm(catalog.models()["deepseek-v3"], catalog.gpu("H100"), 8)
    assert any("PP=" in fix for fix in refused.value.alternatives)


@pytest.mark.parametrize(
    ("name", "checkpoint"), [("qwen3-8b", "Qwen/Qwen3-8B-AWQ"), ("qwen3-32b", "Qwen/Qwen3-32B-AWQ")]
)
def test_qwen3_awq_checkpoints_plan(name: str, checkpoint: str) -> None:
    """Qwen's own AWQ checkpoints (served in the L40S and A100 logs) plan as themselves."""
    request = planner.Request(quantization="awq")
    plan = planner.plan_vllm(catalog.models()[name], catalog.gpu("RTX-3090"), 1, request=request)
    assert (plan.checkpoint, plan.quantization) == (checkpoint, "awq")
