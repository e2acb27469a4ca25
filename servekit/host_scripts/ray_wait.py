# Runs on a Ray head host (the vLLM venv's python): wait until `ray status` lists N active nodes.
# argv: RAY_BINARY ADDRESS NODES TIMEOUT_S. Prints progress; exit 1 with the last status if the
# cluster is not complete in time.
import re
import subprocess
import sys
import time

ray, address, wanted, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
started = time.time()
last = ""
shown = 0.0
while True:
    try:
        done = subprocess.run(
            [ray, "status", "--address", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        last = done.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        last = "ray status timed out"
    active = 0
    section = None
    for line in last.splitlines():
        if line.strip().endswith(":") and not line.startswith(" "):
            section = line.strip()
        elif section == "Active:":
            match = re.match(r"\s*(\d+)\s+node_", line)
            if match:
                active += int(match.group(1))
    if active >= wanted:
        print(f"ray status: {active} of {wanted} nodes active after {time.time() - started:.0f}s")
        sys.exit(0)
    if time.time() - started > timeout:
        print(
            f"ray status: {active} of {wanted} nodes active after {timeout:.0f}s; "
            f"last status:\n{last}",
            file=sys.stderr,
        )
        sys.exit(1)
    if time.time() - shown >= 10:
        shown = time.time()
        print(f"ray status: {active} of {wanted} nodes active, waiting", flush=True)
    time.sleep(2)
