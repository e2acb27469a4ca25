# Runs on a host as root (python3 -c): (re)start systemd units and wait until they are ready.
# stdin: JSON {"jobs": [{unit, action: "start"|"restart"|null, enable: bool, url: str|null,
#               timeout: seconds}], "journal_lines": N}.
# A job with a URL is ready when it answers 200 (vLLM's /health); one without (a headless worker,
# a Ray node) when its unit has stayed active for a few seconds. A unit that exits, fails or is
# restarted by systemd while waiting is a failure at once: its journal since the start is printed.
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

job = json.load(sys.stdin)
jobs = job["jobs"]
lines = job.get("journal_lines", 40)
STABLE_S = 3.0
PROGRESS_S = 15.0


def show(unit):
    done = subprocess.run(
        ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,InvocationID,Result", unit],
        stdout=subprocess.PIPE,
    )
    return dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)


def health(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except Exception:
        return None


def journal(unit, since):
    done = subprocess.run(
        [
            "journalctl",
            "-u",
            unit,
            "--since",
            f"@{int(since)}",
            "-n",
            str(lines),
            "--no-pager",
            "-o",
            "short-iso",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return done.stdout.decode("utf-8", "replace").rstrip()


started = time.time() - 1
failed = []
pending = {}
for item in jobs:
    unit = item["unit"]
    if item.get("enable"):
        subprocess.run(["systemctl", "enable", "--quiet", unit], check=True)
    if item.get("action"):
        # Blocking: the old process has stopped and the new one runs when this returns.
        done = subprocess.run(["systemctl", item["action"], unit])
        if done.returncode != 0:
            failed.append((unit, "systemctl {} failed".format(item["action"])))
            continue
        print("{}: {}".format(unit, "restarted" if item["action"] == "restart" else "started"))
    pending[unit] = item
    sys.stdout.flush()

base = {unit: show(unit) for unit in pending}
active_since = {}
last_progress = time.time()
while pending:
    now = time.time()
    for unit, item in list(pending.items()):
        state = show(unit)
        elapsed = now - started
        restarted = state.get("NRestarts") != base[unit].get("NRestarts") or (
            state.get("InvocationID") != base[unit].get("InvocationID")
        )
        dead = state.get("ActiveState") in ("failed", "inactive", "deactivating") or (
            state.get("SubState") == "auto-restart"
        )
        if dead or restarted:
            failed.append(
                (
                    unit,
                    "the process exited ({}/{}, result {})".format(
                        state.get("ActiveState"), state.get("SubState"), state.get("Result")
                    ),
                )
            )
            del pending[unit]
            continue
        if item.get("url"):
            code = health(item["url"])
            if code == 200:
                print(f"{unit}: {item['url']} answered 200 after {elapsed:.0f}s")
                del pending[unit]
                continue
        elif state.get("ActiveState") == "active":
            active_since.setdefault(unit, now)
            if now - active_since[unit] >= STABLE_S:
                print(f"{unit}: active after {elapsed:.0f}s")
                del pending[unit]
                continue
        if elapsed > item["timeout"]:
            what = item.get("url") or "a stable active state"
            failed.append(
                (
                    unit,
                    f"not ready after {item['timeout']}s (waited for {what}; the bound scales with "
                    "the model: servekit's ready_timeout_s)",
                )
            )
            del pending[unit]
    if pending and time.time() - last_progress >= PROGRESS_S:
        last_progress = time.time()
        for unit, item in pending.items():
            print(f"{unit}: loading, {time.time() - started:.0f}s of at most {item['timeout']}s")
    sys.stdout.flush()
    if pending:
        time.sleep(1)

for unit, why in failed:
    print(f"{unit}: FAILED: {why}. Last journal lines:", file=sys.stderr)
    print(journal(unit, started), file=sys.stderr)
    print(f"(full log: journalctl -u {unit})", file=sys.stderr)
sys.exit(1 if failed else 0)
