"""The CUDA check as a fact: `servekit/cuda_check.py` run on the host (inside the engines'
sandbox where systemd runs), its JSON result read back."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from typing import Literal

from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import MISSING, STATUS_PREFIX, probe, split_status
from servekit.nvidia.shapes import CudaCheckResult

SANDBOX_MARK = "servekit-cuda-sandbox="
UNSANDBOXED_MARK = "servekit-cuda-unsandboxed"


def cuda_check_command(script: str, run_args: list[str], source: str | None = None) -> str:
    """Run the CUDA check in the engines' sandbox (`systemd-run ...` argv, built from
    servekit/systemd.py) where systemd runs; if it fails there, run it plainly too, to tell a
    sandbox that hides the GPUs from a driver that does not work. Without systemd (the
    recorded H200 host had none), the check runs plainly and says so. With `source`, the
    check's text is given to `python3 -c` instead of a script path (nothing uploaded)."""
    program = f"-c {shlex.quote(source)}" if source else shlex.quote(script)
    plain = f"python3 {program} 2>&1"
    sandboxed = " ".join(shlex.quote(a) for a in run_args)
    sandboxed += f' "$(command -v python3)" {program} 2>&1'
    return (
        f'if ! command -v python3 >/dev/null 2>&1; then echo "{STATUS_PREFIX}{MISSING}"; '
        "elif [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then "
        f"echo {SANDBOX_MARK}systemd; {sandboxed}; rc=$?; "
        f'if [ "$rc" -ne 0 ]; then echo {UNSANDBOXED_MARK}; {plain}; fi; '
        f'echo "{STATUS_PREFIX}$rc"; '
        f'else echo {SANDBOX_MARK}none; {plain}; echo "{STATUS_PREFIX}$?"; fi'
    )


def _check_result(lines: list[str], status: str) -> CudaCheckResult:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                result: CudaCheckResult = json.loads(line)
            except json.JSONDecodeError:
                break
            return result
    text = " ".join(line.strip() for line in lines if line.strip())
    return {"ok": False, "error": f"the CUDA check failed: {text or status}", "error_code": None}


class CudaCheck(FactBase[CudaCheckResult]):
    """The result of servekit's CUDA check (`servekit/cuda_check.py`, uploaded) run by python3,
    inside the engine units' sandbox when `run_args` (a `systemd-run` argv) are given and the
    host runs systemd."""

    @override
    def command(self, script: str, run_args: list[str] | None = None, inline: bool = False) -> str:
        source = resources.files("servekit").joinpath("cuda_check.py").read_text()
        if not run_args:
            program = f"-c {shlex.quote(source)}" if inline else shlex.quote(script)
            return probe("python3", f"python3 {program}")
        return cuda_check_command(script, run_args, source if inline else None)

    @staticmethod
    @override
    def default() -> CudaCheckResult:
        return {"ok": False, "error": "python3 is not installed", "error_code": None}

    @override
    def process(self, output: list[str]) -> CudaCheckResult:
        lines, status = split_status(output)
        if status == MISSING:
            return self.default()
        sandbox: Literal["systemd", "none"] = "none"
        if lines and lines[0].startswith(SANDBOX_MARK):
            sandbox = "systemd" if lines[0] == f"{SANDBOX_MARK}systemd" else "none"
            lines = lines[1:]
        outside: list[str] | None = None
        if UNSANDBOXED_MARK in lines:
            at = lines.index(UNSANDBOXED_MARK)
            lines, outside = lines[:at], lines[at + 1 :]
        result = _check_result(lines, status)
        result["sandbox"] = sandbox
        if outside is not None:
            result["unsandboxed_ok"] = bool(_check_result(outside, "").get("ok"))
        return result
