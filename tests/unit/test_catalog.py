"""The catalogs load, cross-reference each other, and their numbers agree with the models' own
architecture (a typo in a layer count or a parameter count fails here)."""

from __future__ import annotations

import pytest

from servekit import catalog
from servekit.catalog.hf_config import count_params

TEXT_MODELS = [m for m in catalog.models().values() if not m.multimodal and not m.params_from_card]
CARD_MODELS = [m for m in catalog.models().values() if m.params_from_card]


def _config(model: catalog.ModelInfo) -> dict[str, object]:
    """The config.json fields count_params reads, from a catalog entry."""
    return {
        "hidden_size": model.hidden_size,
        "num_attention_heads": model.attention_heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "intermediate_size": model.intermediate_size,
        "vocab_size": model.vocab_size,
        "num_hidden_layers": model.layers,
        "tie_word_embeddings": model.tied_embeddings,
        "num_local_experts": model.experts,
        "attention_bias": model.qkv_bias,
    }


@pytest.mark.parametrize("model", TEXT_MODELS, ids=lambda m: m.name)
def test_params_match_architecture(model: catalog.ModelInfo) -> None:
    config = _config(model)
    # Norm weights (2-4 per layer, q/k norms) are a rounding error; everything else must match.
    assert count_params(config) == pytest.approx(model.params, rel=2e-4)


@pytest.mark.parametrize("model", CARD_MODELS, ids=lambda m: m.name)
def test_card_params_only_where_count_params_cannot_reach(model: catalog.ModelInfo) -> None:
    """Params from a model card only for architectures count_params does not model (MLA, MoE with
    biases or shared experts), and then near what the architecture alone gives."""
    assert model.kv_lora_rank or model.experts
    assert count_params(_config(model)) == pytest.approx(model.params, rel=0.1)


@pytest.mark.parametrize("model", catalog.models().values(), ids=lambda m: m.name)
def test_model_entries_are_consistent(model: catalog.ModelInfo) -> None:
    assert model.attention_heads % model.kv_heads == 0
    assert model.max_context >= 8192
    assert catalog.find_model(model.hf_id) == model
    if model.ollama_tag:
        assert catalog.find_model(model.ollama_tag) == model
        assert model.ollama_size_gb and model.ollama_size_gb < 2.2 * model.params / 1e9
    if model.experts:
        assert model.active_params and model.active_params < model.params


def test_required_models_present() -> None:
    wanted = [
        "llama-3.2-1b-instruct",
        "llama-3.2-3b-instruct",
        "llama-3.1-8b-instruct",
        "llama-3.1-70b-instruct",
        "llama-3.1-405b-instruct",
        "qwen2.5-7b-instruct",
        "qwen2.5-14b-instruct",
        "qwen2.5-32b-instruct",
        "qwen2.5-72b-instruct",
        "mistral-7b-instruct-v0.3",
        "mixtral-8x7b-instruct-v0.1",
        "gemma-2-9b-it",
        "gemma-3-27b-it",
    ]
    assert set(wanted) <= set(catalog.model_names())


def test_gpu_lookup_by_alias_and_nvidia_smi_name() -> None:
    # The name the recorded H200 host's nvidia-smi printed (shared fixtures).
    assert catalog.gpu("NVIDIA H200").memory_mib == 143771
    assert catalog.gpu("a100-80gb").name == "A100-SXM4-80GB"
    assert catalog.gpu("NVIDIA A100-SXM4-40GB").name == "A100-SXM4-40GB"
    assert catalog.gpu("Tesla T4").compute_capability_tuple == (7, 5)
    with pytest.raises(catalog.CatalogError, match="did you mean"):
        catalog.gpu("A100-90GB")


@pytest.mark.parametrize("name", list(catalog.gpus()))
def test_gpu_entries(name: str) -> None:
    gpu = catalog.gpu(name)
    assert gpu.bandwidth_gbps > 0
    if gpu.apple:
        assert gpu.memory_mib is None
    else:
        assert gpu.memory_mib and gpu.memory_mib > 15000
        assert gpu.fp8 == (gpu.compute_capability_tuple >= (8, 9))


@pytest.mark.parametrize("itype", catalog.instance_types().values(), ids=lambda i: i.name)
def test_instance_types_refer_to_known_gpus(itype: catalog.InstanceType) -> None:
    assert catalog.gpu(itype.gpu)
    assert itype.gpus in (1, 4, 8)
    assert (itype.price_usd_hour is None) == (itype.price_date is None)
    if itype.network_cards > 1:
        assert itype.max_efa >= itype.network_cards // 8


def test_versions() -> None:
    release = catalog.vllm_release("0.33.0")
    assert release.torch == "2.14.0"
    cuda13 = next(b for b in release.builds if b.cuda == "13.0")
    assert catalog.version_tuple(cuda13.min_driver) >= (580,)
    assert catalog.default_driver_branch() == 580
    assert catalog.version_tuple(catalog.ollama_versions().default) >= catalog.version_tuple(
        catalog.ollama_versions().minimum
    )


def test_ollama_tag_normalisation() -> None:
    assert catalog.normalise_ollama_tag("llama3.2") == "llama3.2:latest"
    assert catalog.normalise_ollama_tag("registry.ollama.ai/library/qwen2.5:7b") == "qwen2.5:7b"
    assert (
        catalog.normalise_ollama_tag("hf.co/org/repo-GGUF:Q4_K_M") == "hf.co/org/repo-GGUF:Q4_K_M"
    )


def test_driver_branches_match_nvidias_table() -> None:
    """Kind and end of life as NVIDIA's "CUDA and Drivers" table gives them
    (docs.nvidia.com/datacenter/tesla/drivers/620/ and /615/supported-drivers-and-cuda-toolkit-
    versions.html): R580 ends June 2028 (not August, endoflife.date's release + 3 years)."""
    branches = catalog.driver_branches()
    table = {535: ("LTSB", "2026-06"), 580: ("LTSB", "2028-06"), 595: ("PB", "2027-03")}
    table[620] = ("LTSB", "2029-09")
    for branch, (kind, end_of_life) in table.items():
        assert (branches[branch].kind, branches[branch].end_of_life) == (kind, end_of_life)


def test_minor_version_compatibility_minimums() -> None:
    """NVIDIA's Minor Version Compatibility table: CUDA 13.x >= 580, 12.x >= 525, 11.x >= 450."""
    assert [catalog.minor_version_minimum_branch(m) for m in (11, 12, 13)] == [450, 525, 580]
    assert catalog.minor_version_minimum_branch(14) is None
