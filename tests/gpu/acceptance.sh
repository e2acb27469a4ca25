#!/usr/bin/env bash
# GPU acceptance: record, on a machine with one (or more) NVIDIA GPU, what servekit's facts and
# `servekit doctor` read, so the outputs become test fixtures. No network needed; < 5 minutes.
#
# Usage (from the repository root, with servekit installed in .venv or on PATH):
#
#     tests/gpu/acceptance.sh [OUTDIR]        # default: acceptance-<hostname>-<date>/
#     SERVEKIT_FLEET=inventories/x.py tests/gpu/acceptance.sh   # doctor compares with that fleet
#
# It writes, one file per command, in the format of tests/data/gpu-hosts/ (first line
# `$ <command>`, last `[rc=<exit code>]`):
#
#   proc-devices.txt             cat /proc/devices (the device groups the units' DeviceAllow= need)
#   proc-driver-version.txt      cat /proc/driver/nvidia/version
#   nvidia-smi-qx.txt            nvidia-smi -q -x
#   nvidia-smi-q.txt             nvidia-smi -q (ECC, clock event reasons, fabric)
#   nvidia-smi-query-nounits.txt the query servekit's NvidiaGpus fact runs
#   nvidia-smi-nvlink.txt        nvidia-smi nvlink -s
#   kernel-xid.txt               Xid lines of the kernel log since boot
#   cuda-check-sandboxed.txt     servekit/cuda_check.py inside the engine units' sandbox
#                                (systemd-run with their DevicePolicy=/DeviceAllow=...; needs
#                                root or passwordless sudo, and systemd as PID 1)
#   cuda-check-plain.txt         the same check outside any sandbox
#   doctor-local.json            servekit doctor --local --json
#   README.md                    the machine: GPU, driver, OS, kernel, date
#
# Copy the folder next to tests/data/gpu-hosts/h200-ubuntu2404/ and describe it in the README
# there. Exit status: 0 when everything was recorded (a failing check is recorded, not fatal),
# 2 when the machine cannot be recorded (no nvidia-smi).
set -u

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found: run this on a machine with an NVIDIA GPU and its driver" >&2
    echo "       (servekit's deploys/gpu.py installs one)" >&2
    exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-acceptance-$(hostname -s)-$(date -u +%Y%m%d)}"
PY="${SERVEKIT_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
mkdir -p "$OUT" || exit 2
STEP_TIMEOUT=120   # seconds per command: the whole run stays under 5 minutes

record() {  # record FILE COMMAND: the command's output and exit status, in the fixture format
    local file="$OUT/$1"
    shift
    echo "recording $file" >&2
    {
        echo "\$ $*"
        timeout "$STEP_TIMEOUT" bash -c "$*" 2>&1
        echo "[rc=$?]"
    } >"$file"
}

as_root() {  # run as root: directly, or with passwordless sudo; 1 otherwise
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo -n "$@"; else
        echo "needs root or passwordless sudo" >&2
        return 1
    fi
}

QUERY="index,name,uuid,memory.total,driver_version,compute_cap,pci.bus_id,persistence_mode"
QUERY="$QUERY,mig.mode.current"
record proc-devices.txt "cat /proc/devices"
record proc-driver-version.txt "cat /proc/driver/nvidia/version"
record nvidia-smi-qx.txt "nvidia-smi -q -x"
record nvidia-smi-q.txt "nvidia-smi -q"
record nvidia-smi-query-nounits.txt \
    "nvidia-smi --query-gpu=$QUERY --format=csv,noheader,nounits"
record nvidia-smi-nvlink.txt "nvidia-smi nvlink -s"
record kernel-xid.txt \
    "{ journalctl -k -b -q --no-pager -o cat 2>/dev/null || dmesg; } | grep -a 'NVRM: Xid'; true"

CHECK="$REPO/servekit/cuda_check.py"
record cuda-check-plain.txt "python3 -c \"\$(cat '$CHECK')\""
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
    # the engine units' sandbox for this host's device groups, exactly as the deploy builds it
    SANDBOX="$("$PY" -c '
import shlex
from servekit import systemd
from servekit.facts.devices import char_device_groups
groups = char_device_groups(open("/proc/devices").read())
print(shlex.join(systemd.systemd_run(systemd.gpu_check_sandbox(groups))))
')" || { echo "error: cannot import servekit with $PY (set SERVEKIT_PYTHON)" >&2; exit 2; }
    export -f as_root
    record cuda-check-sandboxed.txt \
        "as_root $SANDBOX \"\$(command -v python3)\" -c \"\$(cat '$CHECK')\""
else
    record cuda-check-sandboxed.txt "echo 'no systemd as PID 1 here: the sandboxed check cannot run'"
fi

SERVEKIT="$(dirname "$PY")/servekit"
[ -x "$SERVEKIT" ] || SERVEKIT=servekit
FLEET_ARGS=()
[ -n "${SERVEKIT_FLEET:-}" ] && FLEET_ARGS=(--fleet "$SERVEKIT_FLEET")
echo "recording $OUT/doctor-local.json" >&2
timeout "$STEP_TIMEOUT" "$SERVEKIT" doctor --local "${FLEET_ARGS[@]}" --json >"$OUT/doctor-local.json"
doctor_rc=$?

{
    echo "# Recorded by tests/gpu/acceptance.sh on $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c | xargs)"
    echo "- driver: $(head -n 1 /proc/driver/nvidia/version 2>/dev/null)"
    echo "- OS: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), kernel $(uname -r)"
    echo "- systemd as PID 1: $([ -d /run/systemd/system ] && echo yes || echo no)"
    echo "- servekit doctor --local exit status: $doctor_rc (1: a check failed; see doctor-local.json)"
} >"$OUT/README.md"
echo "recorded into $OUT/ (doctor exit status $doctor_rc)" >&2
exit 0
