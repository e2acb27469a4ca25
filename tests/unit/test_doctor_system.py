"""The doctor's system rows: disk for the planned weights, memory, the engine units' open-file
limit; from recorded outputs in tests/data/doctor and from the fact commands run here."""

from __future__ import annotations

from pathlib import Path

from test_doctor_gpu import DOCTOR, host_plan
from test_gpu_facts import recorded, shell

from servekit.doctor.system import (
    ENGINE_NOFILE,
    WeightsNeed,
    disk_row,
    memory_row,
    nofile_rows,
    weights_need,
)
from servekit.facts.doctor import DiskSpace, MemInfo, UnitProperties, parse_disk

GIB = 1 << 30


def need(total: float = 14.96, per_host: float = 14.96) -> WeightsNeed:
    return WeightsNeed("/var/lib/vllm/huggingface/hub", total, per_host, ["ckpt@main"])


def test_weights_need_from_the_plan() -> None:
    planned = weights_need(host_plan("single_a100.py"))
    assert planned.directory == "/var/lib/vllm/huggingface/hub"
    assert planned.total_gib == planned.per_host_gib == 14.96
    assert planned.checkpoints == ["meta-llama/Llama-3.1-8B-Instruct@main"]


def test_a_disk_too_small_for_the_weights() -> None:
    disk = parse_disk(recorded(DOCTOR / "df-weights-small.txt")[0])
    assert disk == {"mount": "/", "free_bytes": 9430960 * 1024, "used_below_bytes": GIB}
    failed = disk_row("gpu1", need(), disk)
    assert failed.verdict == "fail"
    assert failed.expected == "room for 15.0 GiB of weights in /var/lib/vllm/huggingface/hub"
    assert failed.found == "9.0 GiB free on /, 1.0 GiB already there"
    assert failed.fix.startswith("free 5.0 GiB more on / (`df -h /`")


def test_weights_already_there_need_no_new_space() -> None:
    disk = {"mount": "/", "free_bytes": 2 * GIB, "used_below_bytes": 14 * GIB}
    assert disk_row("gpu1", need(total=15.5), disk).verdict == "ok"  # type: ignore[arg-type]
    assert disk_row("gpu1", need(total=16.5), disk).verdict == "fail"  # type: ignore[arg-type]


def test_disk_fact_command_here(tmp_path: Path) -> None:
    """The command on this machine: a directory that does not exist yet is measured on its
    nearest existing parent; one that exists counts what is already in it."""
    command = DiskSpace().command(path=str(tmp_path / "not" / "yet"))
    disk = DiskSpace().process(shell(command))
    assert disk is not None and disk["free_bytes"] > 0 and disk["used_below_bytes"] == 0
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "blob").write_bytes(b"x" * (1 << 20))
    there = DiskSpace().process(shell(DiskSpace().command(path=str(tmp_path / "w"))))
    assert there is not None and there["used_below_bytes"] >= 1 << 20


def test_memory_here_and_too_little() -> None:
    meminfo = MemInfo().process(shell(MemInfo().command()))
    assert meminfo["MemTotal"] > 0 and meminfo["MemTotal"] % 1024 == 0
    small = {"MemTotal": 8 * GIB, "MemAvailable": 6 * GIB}
    warned = memory_row("gpu1", need(per_host=65.7), small)
    assert warned.verdict == "warn"
    assert warned.found == "8.0 GiB total, 6.0 available"
    assert warned.expected == "at least 65.7 GiB of memory (this host's share of weights)"
    assert memory_row("gpu1", need(per_host=4.0), small).verdict == "ok"


def unit(name: str) -> dict[str, str]:
    return UnitProperties().process(recorded(DOCTOR / name)[0])


def test_open_file_limit_of_the_engine_units() -> None:
    rows = nofile_rows(
        "gpu1",
        {
            "vllm-a.service": unit("systemctl-show-nofile-ok.txt"),
            "vllm-b.service": unit("systemctl-show-nofile-low.txt"),
            "vllm-c.service": unit("systemctl-show-not-found.txt"),
            "vllm-d.service": {},
        },
    )
    assert [(r.check, r.verdict, r.found) for r in rows] == [
        ("open files vllm-a.service", "ok", f"LimitNOFILE={ENGINE_NOFILE}"),
        ("open files vllm-b.service", "fail", "LimitNOFILE=1024"),
        ("open files vllm-c.service", "skip", "unit not-found (not deployed yet)"),
        ("open files vllm-d.service", "skip", "no systemd on this host"),
    ]
    assert "systemctl cat vllm-b.service" in rows[1].fix
    assert ENGINE_NOFILE == "1048576"
