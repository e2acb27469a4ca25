"""The vLLM layout is the paths the deploy has always used (hosts converged before keep theirs)."""

from __future__ import annotations

from servekit.vllm_layout import LAYOUT

# The paths the vLLM deploy used before the layout owned them (the module constants, verbatim).
VLLM_HOME = "/var/lib/vllm"
VLLM_CONFIG_DIR = "/etc/vllm"
VLLM_VENVS = "/opt/vllm/venvs"
HF_HOME = f"{VLLM_HOME}/huggingface"
MODELS_DIR = f"{VLLM_HOME}/models"
MARKERS_DIR = f"{VLLM_HOME}/weights"
CURRENT_LINK = "/opt/vllm/current"
PREVIOUS_LINK = "/opt/vllm/previous"
ROLLBACK_DIR = "/var/lib/servekit/rollback"
VLLM_USER = "vllm"
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


def test_layout_matches_the_paths_hosts_already_have() -> None:
    assert (LAYOUT.home, LAYOUT.config_dir, LAYOUT.venvs) == (
        VLLM_HOME,
        VLLM_CONFIG_DIR,
        VLLM_VENVS,
    )
    assert (LAYOUT.hf_home, LAYOUT.models_dir, LAYOUT.markers_dir) == (
        HF_HOME,
        MODELS_DIR,
        MARKERS_DIR,
    )
    assert LAYOUT.directories() == DIRECTORIES
    assert (LAYOUT.current_link, LAYOUT.previous_link) == (
        CURRENT_LINK,
        PREVIOUS_LINK,
    )
    assert LAYOUT.rollback_copy("vllm-chat-0") == f"{ROLLBACK_DIR}/vllm-chat-0"


def test_unit_files_name_what_pruning_removes() -> None:
    assert LAYOUT.unit_files("vllm-chat-0.service") == [
        "/etc/systemd/system/vllm-chat-0.service",
        "/etc/vllm/chat-0.yaml",
        "/etc/vllm/chat-0.env",
        "/var/lib/servekit/rollback/vllm-chat-0",
    ]
    assert LAYOUT.unit_files("ray-chat-0.service") == ["/etc/systemd/system/ray-chat-0.service"]
