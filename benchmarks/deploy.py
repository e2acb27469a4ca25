"""How long `pyinfra INVENTORY deploys/vllm.py` takes on test hosts, and how many SSH round trips.

Boots Debian 12 test hosts (tests/hostbench, needs root and systemd-nspawn), serves the stand-in
vLLM wheel from a local package index (PyPI passes through for everything else), installs a fake
nvidia-smi (580 driver) and a local checkpoint on each host, then measures with the real pyinfra
CLI:

- the first converge of one fresh host, and of four;
- a re-run that changes nothing, on one host and on four (goals: <= 5 s and <= 8 s);
- SSH round trips per host in a no-change run: the commands pyinfra sends over the host's one
  SSH connection (counted from `--debug` output), besides connecting.

    python benchmarks/deploy.py [--repeat 3] [--json]

Not a test: it prints numbers (the median of `--repeat` no-change runs).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "hosts")]

from hostbench import Bench, BenchHost, PackageIndex, run_pyinfra, settings  # noqa: E402
from standins.build import build_vllm_wheel  # noqa: E402
from vllm_support import DEPLOY, fake_gpus, put_model, secret, ssh_host, write_fleet  # noqa: E402


def inventory(workdir: Path, name: str, hosts: list[BenchHost], index: PackageIndex) -> Path:
    key = secret(workdir, "engine.key", "sk-bench-engine")
    fleet = f"""Fleet(
    name={name!r},
    machines=[{", ".join(ssh_host(h) for h in hosts)}],
    serve=[Serve(name="chat", model="llama-3.1-8b-instruct")],
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(python_index={index.url!r}, weights=LocalPath(path="/srv/models")),
)"""
    return write_fleet(workdir / name / "inventory.py", fleet)


def timed(path: Path, *args: str) -> tuple[float, Any]:
    started = time.monotonic()
    run = run_pyinfra(path, DEPLOY, args=args, timeout=1800)
    elapsed = time.monotonic() - started
    run.check()
    return elapsed, run


def round_trips(path: Path, hosts: list[BenchHost]) -> dict[str, int]:
    """Commands sent to each host in a no-change run (pyinfra's `--debug` logs each one)."""
    _elapsed, run = timed(path, "--debug")
    assert run.changes() == {}, run
    counts = {h.name: 0 for h in hosts}
    for line in run.stderr.splitlines():
        match = re.search(r"Running command on (\S+?):", line)
        if match and match.group(1) in counts:
            counts[match.group(1)] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="no-change runs to take the median of"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    bench = Bench.open()
    try:
        with tempfile.TemporaryDirectory(prefix="servekit-bench-") as tmp:
            workdir = Path(tmp)
            with PackageIndex(workdir / "dists", settings.GATEWAY, workdir / "index.log") as index:
                index.add(build_vllm_wheel(workdir / "wheels"))
                hosts = bench.boot(5)
                for host in hosts:
                    fake_gpus(host)
                    put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
                one = inventory(workdir, "one", hosts[:1], index)
                four = inventory(workdir, "four", hosts[1:], index)

                results["first_converge_1_host_s"], _ = timed(one)
                results["first_converge_4_hosts_s"], _ = timed(four)
                for label, path in (("1_host", one), ("4_hosts", four)):
                    runs = []
                    for _ in range(options.repeat):
                        elapsed, run = timed(path)
                        assert run.changes() == {}, run
                        runs.append(elapsed)
                    results[f"no_change_{label}_s"] = statistics.median(runs)
                    results[f"no_change_{label}_runs_s"] = runs
                trips = round_trips(four, hosts[1:])
                results["round_trips_per_host_no_change"] = trips
    finally:
        bench.close()
    if options.json:
        print(json.dumps(results, indent=2))
        return 0
    print("vLLM deploy on Debian 12 test hosts (stand-in vLLM from a local index)")
    for key in (
        "first_converge_1_host_s",
        "first_converge_4_hosts_s",
        "no_change_1_host_s",
        "no_change_4_hosts_s",
    ):
        print(f"  {key:<28} {results[key]:7.2f}")
    print(f"  no-change runs (1 host)      {results['no_change_1_host_runs_s']}")
    print(f"  no-change runs (4 hosts)     {results['no_change_4_hosts_runs_s']}")
    print(f"  SSH round trips per host     {results['round_trips_per_host_no_change']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
