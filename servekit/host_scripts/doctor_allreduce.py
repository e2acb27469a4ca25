"""One rank of `servekit doctor`'s all-reduce across the nodes of a replica, run by the vLLM venv's
python (it needs that torch). Argument: JSON {rank, world, master, port, backend ("nccl" on GPU
hosts, "gloo" without), megabytes, iterations, timeout_s, device, env: the unit's
NCCL_*/GLOO_* variables}. Prints one JSON line:
{"ok": true, "busbw_gbps": ..., "algbw_gbps": ..., "seconds": ...} or {"ok": false, "error": ...}.

Bus bandwidth as nccl-tests reports it for all-reduce: algbw * 2 * (n - 1) / n, where algbw is
the bytes of the buffer over the time of one operation
(github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md).
"""

import datetime
import json
import os
import sys
import time


def main(spec):
    os.environ.update(spec.get("env", {}))
    import torch
    import torch.distributed as dist

    world = int(spec["world"])
    dist.init_process_group(
        backend=spec["backend"],
        init_method=f"tcp://{spec['master']}:{int(spec['port'])}",
        rank=int(spec["rank"]),
        world_size=world,
        timeout=datetime.timedelta(seconds=int(spec["timeout_s"])),
    )
    device = "cpu"
    if spec["backend"] == "nccl":
        device = f"cuda:{int(spec.get('device', 0))}"
        torch.cuda.set_device(device)
    elements = int(spec["megabytes"]) * 1024 * 1024 // 4
    buffer = torch.ones(elements, dtype=torch.float32, device=device)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()
        dist.barrier()

    dist.all_reduce(buffer)
    sync()
    iterations = int(spec["iterations"])
    start = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(buffer)
    sync()
    seconds = (time.perf_counter() - start) / iterations
    dist.destroy_process_group()
    algbw = elements * 4 / seconds / 1e9
    return {
        "ok": True,
        "seconds": seconds,
        "algbw_gbps": algbw,
        "busbw_gbps": algbw * 2 * (world - 1) / world,
        "world": world,
        "backend": spec["backend"],
        "megabytes": int(spec["megabytes"]),
    }


if __name__ == "__main__":
    try:
        result = main(json.loads(sys.argv[1]))
    except Exception as error:  # one line the doctor can show, whatever failed
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    print(json.dumps(result))
