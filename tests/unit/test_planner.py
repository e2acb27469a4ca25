"""Planner numbers against the public figures (shared/reference/vllm.md §5, perf.md B5)."""

from __future__ import annotations

import pytest

from servekit import catalog, planner

LLAMA_8B = catalog.find_model("llama-3.1-8b-instruct")
LLAMA_70B = catalog.find_model("llama-3.1-70b-instruct")
A100_80 = catalog.gpu("A100-SXM4-80GB")
A100_40 = catalog.gpu("A100-SXM4-40GB")
H100 = catalog.gpu("H100-SXM")


def model(name: str) -> catalog.ModelInfo:
    found = catalog.find_model(name)
    assert found is not None
    return found


def test_llama_8b_public_figures() -> None:
    assert LLAMA_8B is not None
    assert planner.weights_bytes(LLAMA_8B) / 1e9 == pytest.approx(16.06, abs=0.005)
    assert planner.kv_bytes_per_token(LLAMA_8B) == 128 * 1024
    assert planner.kv_bytes_per_token(LLAMA_8B, kv_dtype_bytes=1) == 64 * 1024


def test_llama_70b_public_figures() -> None:
    assert LLAMA_70B is not None
    assert planner.weights_bytes(LLAMA_70B) / 1e9 == pytest.approx(141.1, abs=0.05)
    assert planner.kv_bytes_per_token(LLAMA_70B) == 320 * 1024
    # AWQ int4: ~0.52 B/param on linear layers, embeddings and head in 16-bit: ~39.8 GB.
    assert planner.weights_bytes(LLAMA_70B, "awq") / 1e9 == pytest.approx(39.8, abs=0.1)


def test_70b_bf16_refused_on_one_80gb_gpu_with_alternatives() -> None:
    with pytest.raises(planner.PlanRefused) as refused:
        planner.plan_vllm(
            model("llama-3.1-70b-instruct"),
            A100_80,
            1,
            request=planner.Request(quantization="none"),
        )
    assert "131.42 GiB of weights" in refused.value.reason
    assert "TP=2 on 2 GPUs" in str(refused.value)
    assert "AWQ variant (37.06 GiB)" in str(refused.value)


def test_70b_fits_tp8_on_8_a100_80gb() -> None:
    plan = planner.plan_vllm(model("llama-3.1-70b-instruct"), A100_80, 8)
    assert (plan.tensor_parallel, plan.pipeline_parallel) == (8, 1)
    assert plan.quantization is None
    assert plan.weights_gib_per_gpu == pytest.approx(131.42 / 8, abs=0.01)
    assert plan.max_model_len == 131072
    # 8 KV heads over TP 8: 40 KiB per token per GPU (the figure in vllm.md §5).
    assert planner.kv_bytes_per_token_per_gpu(model("llama-3.1-70b-instruct"), 8, 1) == 40 * 1024
    assert plan.kv_cache_tokens > 1_000_000
    assert plan.max_concurrency == pytest.approx(plan.kv_cache_tokens / 131072, abs=0.01)


def test_70b_awq_fits_one_80gb_gpu() -> None:
    plan = planner.plan_vllm(model("llama-3.1-70b-instruct"), A100_80, 1)
    assert plan.quantization == "awq"
    assert plan.checkpoint == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    assert plan.quantization_flag is None  # never the slow `--quantization awq`
    assert plan.weights_gib_per_gpu < 40
    assert any("AWQ chosen" in note for note in plan.notes)


def test_fp8_chosen_on_hopper_not_ampere() -> None:
    # At 0.95: the startup profile leaves a 70B FP8 model on one H100 ~1 GiB of KV cache at the
    # default 0.92, under one 4096-token request (vLLM PR #12569 logged 22,096 tokens at 0.98).
    roomier = planner.Request(gpu_memory_utilization=0.95)
    hopper = planner.plan_vllm(model("llama-3.1-70b-instruct"), H100, 1, request=roomier)
    assert hopper.quantization == "fp8"
    ampere = planner.plan_vllm(model("llama-3.1-70b-instruct"), A100_80, 1)
    assert ampere.quantization == "awq"


def test_dynamic_fp8_flag_when_no_fp8_checkpoint() -> None:
    qwen = model("qwen2.5-72b-instruct")
    plan = planner.plan_vllm(
        qwen, H100, 2, request=planner.Request(quantization="fp8", max_model_len=8192)
    )
    assert plan.checkpoint == qwen.hf_id
    assert plan.quantization_flag == "fp8"


def test_tp_divides_heads_else_pipeline_fills() -> None:
    qwen7 = model("qwen2.5-7b-instruct")  # 28 attention heads, 4 KV heads: TP 8 impossible
    assert not planner.tensor_parallel_ok(qwen7, 8)
    plan = planner.plan_vllm(qwen7, A100_40, 8)
    assert (plan.tensor_parallel, plan.pipeline_parallel) == (4, 2)
    with pytest.raises(planner.PlanRefused, match="does not divide"):
        planner.plan_vllm(
            qwen7, A100_40, 8, request=planner.Request(tensor_parallel=8, pipeline_parallel=1)
        )


def test_kv_heads_replicated_beyond_tp() -> None:
    gemma = model("gemma-3-1b-it")  # one KV head
    assert planner.kv_bytes_per_token_per_gpu(gemma, 2, 1) == planner.kv_bytes_per_token(gemma)


def test_405b_needs_two_nodes_pipeline_parallel() -> None:
    llama405 = model("llama-3.1-405b-instruct")
    with pytest.raises(planner.PlanRefused) as refused:
        planner.plan_vllm(llama405, H100, 8, request=planner.Request(quantization="none"))
    assert "PP=2 on 16 GPUs (2 nodes of 8)" in str(refused.value)
    plan = planner.plan_vllm(llama405, H100, 8, 2, planner.Request(quantization="none"))
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.nodes) == (8, 2, 2)


def test_max_model_len_lowered_to_what_kv_holds() -> None:
    plan = planner.plan_vllm(model("llama-3.1-8b-instruct"), catalog.gpu("L4"), 1)
    assert plan.max_model_len < 131072
    assert plan.max_model_len <= plan.kv_cache_tokens
    assert plan.max_model_len % 1024 == 0
    with pytest.raises(planner.PlanRefused, match="max_model_len=131072 does not fit") as refused:
        planner.plan_vllm(
            model("llama-3.1-8b-instruct"),
            catalog.gpu("L4"),
            1,
            request=planner.Request(max_model_len=131072, quantization="none"),
        )
    assert refused.value.field == "max_model_len"
    assert any(f"max_model_len={plan.max_model_len}" in fix for fix in refused.value.alternatives)


def test_fp8_kv_cache_doubles_capacity() -> None:
    base = planner.plan_vllm(model("llama-3.1-8b-instruct"), A100_80, 1)
    fp8 = planner.plan_vllm(
        model("llama-3.1-8b-instruct"), A100_80, 1, request=planner.Request(kv_cache_dtype="fp8")
    )
    assert fp8.kv_cache_tokens == pytest.approx(2 * base.kv_cache_tokens, rel=0.001)


@pytest.mark.parametrize(
    ("gpu", "name", "quantization", "expected"),
    [  # perf.md B5: batch-1 ceilings, weights only
        ("A100-SXM4-40GB", "llama-3.1-8b-instruct", "none", 97),
        ("A100-SXM4-80GB", "llama-3.1-8b-instruct", "none", 127),
        ("H100-SXM", "llama-3.1-8b-instruct", "none", 209),
        ("H200", "llama-3.1-8b-instruct", "none", 299),
    ],
)
def test_decode_ceiling(gpu: str, name: str, quantization: str, expected: int) -> None:
    ceiling = planner.decode_ceiling(model(name), catalog.gpu(gpu), quantization, 1)
    assert ceiling == pytest.approx(expected, abs=1.5)


def test_moe_decode_reads_active_experts_only() -> None:
    mixtral = model("mixtral-8x7b-instruct-v0.1")
    dense_equivalent = catalog.gpu("H100").bandwidth_gbps * 1e9 / (2 * mixtral.params)
    assert planner.decode_ceiling(mixtral, catalog.gpu("H100"), "none", 1) > 3 * dense_equivalent


def test_apple_silicon_refused_by_vllm() -> None:
    with pytest.raises(planner.PlanRefused, match="Ollama"):
        planner.plan_vllm(model("llama-3.1-8b-instruct"), catalog.gpu("apple-m3-max"), 1)


def test_ollama_fit_on_unified_memory_and_vram() -> None:
    llama8 = model("llama3.1:8b")
    mac = planner.plan_ollama(
        llama8, "llama3.1:8b", catalog.gpu("apple-m3-pro"), 1, 36, 0, 1, "f16"
    )
    assert mac.fits and mac.max_model_len == 32768  # 27 GiB usable -> Ollama's 32k default
    small = planner.plan_ollama(llama8, "llama3.1:8b", catalog.gpu("apple-m1"), 1, 8, 0, 1, "f16")
    assert small.max_model_len == 4096
    big = planner.plan_ollama(
        model("llama3.1:70b"), "llama3.1:70b", catalog.gpu("L4"), 1, None, 0, 1, "f16"
    )
    assert not big.fits
    assert "spill to the CPU" in big.notes[0]
    unknown = planner.plan_ollama(None, "phi4:latest", None, 0, None, 0, 1, "f16")
    assert unknown.fits and "not in the catalog" in unknown.notes[0]
