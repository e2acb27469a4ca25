# Runs on a host as the service user, with servekit's tools venv (huggingface_hub, boto3):
# download one checkpoint into the cache, print progress, and write the completion marker last.
# stdin: JSON {kind: "huggingface"|"s3", checkpoint, revision, marker,
#              hf: {endpoint, cache_dir, token}, s3: {bucket, prefix, dest, region, endpoint_url,
#              access_key_id, secret_access_key}}. Secrets arrive here only, never in argv.
import contextlib
import json
import os
import sys
import threading
import time

PROGRESS_S = 10.0
# hf_xet's high-performance mode raises its download buffer ceiling to 64 GB (xet-core's
# HF_XET_HIGH_PERFORMANCE preset, applied after the environment, so explicit buffer caps are
# ignored: github.com/unslothai/unsloth-zoo/pull/972) and Hugging Face reserves it for machines
# with at least 64 GB of RAM (github.com/huggingface/hub-docs/pull/2731). With it on, a 13.6 GB
# machine was OOM-killed at 11.3 GB RSS downloading a 29.5 GB model, 5.4 GB without it
# (github.com/unslothai/unsloth-zoo/pull/989). So: on only where the memory this process may use
# (host RAM, or its cgroup's limit if lower) is at least that.
XET_HIGH_PERFORMANCE_MIN_BYTES = 64 * 10**9
job = {}


def usable_memory(meminfo, cgroup_max=None):
    """Bytes this process may use: MemTotal of /proc/meminfo, or the cgroup v2 memory.max
    when that is a lower number ('max' means no limit)."""
    total = None
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024  # kB
    limit = (cgroup_max or "").strip()
    if limit.isdigit() and (total is None or int(limit) < total):
        return int(limit)
    return total


def xet_environment(memory):
    """HF_XET_HIGH_PERFORMANCE for a process that may use `memory` bytes (None: unknown)."""
    if memory is not None and memory >= XET_HIGH_PERFORMANCE_MIN_BYTES:
        return {"HF_XET_HIGH_PERFORMANCE": "1"}
    return {}


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def cgroup_memory_max():
    """memory.max of this process's cgroup (v2: the `0::PATH` line of /proc/self/cgroup)."""
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            return read_text("/sys/fs/cgroup" + line[3:].rstrip("/") + "/memory.max")
    return None


class UnsafeKey(Exception):
    """An S3 key that would land outside the checkpoint directory."""


def safe_target(dest, prefix, key):
    """Where `key` (under `prefix`) goes inside `dest`, or UnsafeKey when it would land outside:
    an absolute or `..` part, an empty or control-character part, or a symlink on the way."""
    if not key.startswith(prefix):
        raise UnsafeKey(f"{key!r} is not under the prefix {prefix!r}")
    relative = key[len(prefix) :]
    parts = relative.split("/")
    bad = [p for p in parts if p in ("", ".", "..") or any(ord(c) < 32 or c == "\x7f" for c in p)]
    if bad:
        raise UnsafeKey(
            f"refusing S3 key {key!r}: it would be written outside {dest} (an absolute path, "
            "'..', '.', an empty or control-character part); rename the object in the bucket"
        )
    if os.path.islink(dest):
        raise UnsafeKey(f"refusing to download into {dest}: it is a symlink; remove it")
    root = os.path.realpath(dest)
    target = os.path.join(root, *parts)
    walked = root
    for part in parts:
        walked = os.path.join(walked, part)
        if os.path.islink(walked):
            raise UnsafeKey(
                f"refusing S3 key {key!r}: {walked} is a symlink (it could point outside {dest}); "
                "remove it"
            )
    if os.path.commonpath([root, os.path.realpath(target)]) != root:
        raise UnsafeKey(f"refusing S3 key {key!r}: it resolves outside {dest}")
    return target


def plan_copies(dest, prefix, objects):
    """(key, size, target) for each listed object; refuses the whole listing if one key is
    unsafe, before anything is downloaded."""
    return [(key, size, safe_target(dest, prefix, key)) for key, size in objects]


def tree_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def gib(count):
    return "%.2f GiB" % (count / 2**30)


def with_progress(label, directory, work, expected=None):
    """Run `work()` while printing how much has arrived under `directory` every few seconds."""
    result = {}

    def target():
        try:
            result["value"] = work()
        except BaseException as error:  # reported below, in the main thread
            result["error"] = error

    started = time.time()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(PROGRESS_S)
        if thread.is_alive():
            have = tree_bytes(directory)
            of = f" of {gib(expected)}" if expected else ""
            print(f"{label}: {gib(have)}{of} after {time.time() - started:.0f}s", flush=True)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def huggingface():
    hf = job["hf"]
    os.environ["HF_ENDPOINT"] = hf["endpoint"]
    memory = usable_memory(read_text("/proc/meminfo") or "", cgroup_memory_max())
    for name, value in xet_environment(memory).items():
        os.environ.setdefault(name, value)
    mode = "on" if os.environ.get("HF_XET_HIGH_PERFORMANCE") == "1" else "off"
    print(f"Xet high-performance downloads {mode} ({gib(memory or 0)} usable memory)", flush=True)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import snapshot_download

    repo = job["checkpoint"]
    label = f"{repo}@{job.get('revision') or 'main'}"
    print(f"{label}: downloading from {hf['endpoint']} into {hf['cache_dir']}", flush=True)
    folder = with_progress(
        label,
        hf["cache_dir"],
        lambda: snapshot_download(
            repo_id=repo,
            revision=job.get("revision"),
            cache_dir=hf["cache_dir"],
            token=hf.get("token") or None,
        ),
    )
    commit = os.path.basename(str(folder))
    return {"snapshot": str(folder), "commit": commit, "bytes": tree_bytes(str(folder))}


def s3():
    import boto3
    from botocore.config import Config

    conf = job["s3"]
    kwargs = {"config": Config(retries={"max_attempts": 10, "mode": "adaptive"})}
    if conf.get("region"):
        kwargs["region_name"] = conf["region"]
    if conf.get("endpoint_url"):
        kwargs["endpoint_url"] = conf["endpoint_url"]
    if conf.get("access_key_id"):
        kwargs["aws_access_key_id"] = conf["access_key_id"]
        kwargs["aws_secret_access_key"] = conf["secret_access_key"]
    client = boto3.client("s3", **kwargs)
    bucket, prefix, dest = conf["bucket"], conf["prefix"], conf["dest"]
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                objects.append((item["Key"], item["Size"]))
    if not objects:
        raise SystemExit(
            f"s3://{bucket}/{prefix} holds no files: upload the checkpoint there (one folder per "
            f"checkpoint, e.g. {prefix}config.json)"
        )
    os.makedirs(dest, exist_ok=True)
    try:
        copies = plan_copies(dest, prefix, objects)
    except UnsafeKey as error:
        raise SystemExit(f"s3://{bucket}/{prefix}: {error}") from None
    total = sum(size for _key, size in objects)
    label = f"s3://{bucket}/{prefix}"
    print(f"{label}: {len(objects)} files, {gib(total)}, into {dest}", flush=True)

    def copy_all():
        for key, size, target in copies:
            safe_target(dest, prefix, key)  # again: no symlink appeared on its way since
            if os.path.isfile(target) and os.path.getsize(target) == size:
                continue  # arrived in an earlier, interrupted run
            os.makedirs(os.path.dirname(target), exist_ok=True)
            client.download_file(bucket, key, target + ".part")
            os.replace(target + ".part", target)

    with_progress(label, dest, copy_all, total)
    return {"directory": dest, "files": len(objects), "bytes": total}


def main():
    global job
    job = json.load(sys.stdin)
    try:
        details = huggingface() if job["kind"] == "huggingface" else s3()
    except SystemExit:
        raise
    except BaseException as error:
        print(
            "download of {} failed: {}: {}".format(job["checkpoint"], type(error).__name__, error),
            file=sys.stderr,
        )
        sys.exit(1)
    details.update(
        {
            "checkpoint": job["checkpoint"],
            "revision": job.get("revision"),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    os.makedirs(os.path.dirname(job["marker"]), exist_ok=True)
    with open(job["marker"] + ".tmp", "w") as handle:
        json.dump(details, handle)
    os.replace(job["marker"] + ".tmp", job["marker"])
    print("{}: complete, {}".format(job["checkpoint"], gib(details["bytes"])), flush=True)


if __name__ == "__main__":
    main()
