"""Write the constructed 8 × A100-SXM4-80GB (HGX, NVSwitch) outputs beside this file.

No such machine was available: these follow the recorded H200 outputs line for line (see
../h200-ubuntu2404), with the A100 values public nvidia-smi logs show (name, 81920 MiB, compute
capability 8.0, DGX A100 bus ids, six NVSwitch bridges 0x1af1). Run it to regenerate them.
"""

from pathlib import Path

HERE = Path(__file__).parent
DRIVER = "580.95.05"
BUSES = ["07", "0f", "47", "4e", "87", "90", "b7", "bd"]
SWITCHES = ["c4", "c5", "c6", "c7", "c8", "c9"]
QUERY = (
    "nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version,compute_cap,pci.bus_id,"
    "persistence_mode,mig.mode.current --format=csv,noheader,nounits"
)


def recorded(command: str, lines: list[str], rc: int = 0) -> str:
    return "\n".join([f"$ {command}", *lines, f"[rc={rc}]"]) + "\n"


def query(persistence: str = "Enabled") -> list[str]:
    return [
        f"{i}, NVIDIA A100-SXM4-80GB, GPU-{i:08x}-1a2b-3c4d-5e6f-a100a100a100, 81920, {DRIVER}, "
        f"8.0, 00000000:{bus}:00.0, {persistence}, Disabled"
        for i, bus in enumerate(BUSES)
    ]


def smi_q(state: str, status: str) -> list[str]:
    lines = [
        "",
        "==============NVSMI LOG==============",
        "",
        "Timestamp                                              : Thu Nov 26 05:45:35 2026",
        f"Driver Version                                         : {DRIVER}",
        "CUDA Version                                           : 13.0",
        "",
        f"Attached GPUs                                          : {len(BUSES)}",
    ]
    for bus in BUSES:
        lines += [
            f"GPU 00000000:{bus}:00.0",
            "    Product Name                                       : NVIDIA A100-SXM4-80GB",
            "    Product Architecture                               : Ampere",
            "    Persistence Mode                                   : Enabled",
            "    MIG Mode",
            "        Current                                        : Disabled",
            "        Pending                                        : Disabled",
            "    Fabric",
            f"        State                                          : {state}",
            f"        Status                                         : {status}",
            "        CliqueId                                       : N/A",
            "        ClusterUUID                                    : N/A",
            "        Health",
            "            Bandwidth                                  : N/A",
            "    Processes                                          : None",
        ]
    return [*lines, ""]


def main() -> None:
    (HERE / "nvidia-smi-query-nounits.txt").write_text(recorded(QUERY, query()))
    (HERE / "nvidia-smi-query-persistence-off.txt").write_text(recorded(QUERY, query("Disabled")))
    (HERE / "nvidia-smi-q.txt").write_text(recorded("nvidia-smi -q", smi_q("Completed", "Success")))
    (HERE / "nvidia-smi-q-no-fabricmanager.txt").write_text(
        recorded("nvidia-smi -q", smi_q("In Progress", "N/A"))
    )
    pci = [f"0000:{bus}:00.0 0x030200 0x20b2" for bus in BUSES]
    pci += [f"0000:{bus}:00.0 0x068000 0x1af1" for bus in SWITCHES]
    (HERE / "pci-devices.txt").write_text(recorded("(servekit NvidiaPciDevices)", pci))
    switches = [f"0000:{bus}:00.0" for bus in SWITCHES]
    (HERE / "nvswitch-devices.txt").write_text(
        recorded("ls -1 /proc/driver/nvidia-nvswitch/devices/", switches)
    )
    version = [
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
        "(dvs-builder@U16-I3-B03-4-1)  Thu Sep 18 20:52:12 UTC 2025",
        "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) ",
    ]
    (HERE / "proc-driver-version.txt").write_text(
        recorded("cat /proc/driver/nvidia/version", version)
    )


if __name__ == "__main__":
    main()
