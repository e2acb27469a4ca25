"""The weights operation: a checkpoint downloaded as the service user before anything starts
(Hugging Face or S3, secrets on standard input), or a local path checked."""

from __future__ import annotations

from typing import Any

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit import secrets, shell
from servekit.hostplan import HfWeights, HostPlan, S3Weights
from servekit.operations.common import Commands, failure
from servekit.operations.hoststate import (
    announce,
    python_command,
    stale,
    stdin_json,
    streamed,
    view,
)
from servekit.operations.vllm_work import host_work
from servekit.secrets import SecretError
from servekit.vllm_layout import LAYOUT
from servekit.weights import WeightsLocation, s3_prefix


def weights_job(plan: HostPlan, location: WeightsLocation) -> dict[str, Any]:
    """What `fetch_weights.py` needs, secrets included (it travels on standard input)."""
    source = plan.sources.weights
    job: dict[str, Any] = {
        "kind": location.kind,
        "checkpoint": location.checkpoint,
        "revision": location.revision,
        "marker": location.marker,
    }
    if isinstance(source, HfWeights):
        job["hf"] = {
            "endpoint": source.endpoint,
            "cache_dir": LAYOUT.hf_hub,
            "token": secrets.read_secret(source.token) if source.token else None,
        }
    elif isinstance(source, S3Weights):
        credentials = source.credentials
        keys = secrets.read_secret_lines(credentials) if credentials else []
        if credentials and len(keys) < 2:
            raise SecretError(
                f"S3 credentials ({credentials.describe()}) need two lines: the access "
                "key id, then the secret access key"
            )
        job["s3"] = {
            "bucket": source.bucket,
            "prefix": s3_prefix(source, location.checkpoint),
            "dest": location.directory,
            "region": source.region,
            "endpoint_url": source.endpoint_url,
            "access_key_id": keys[0] if keys else None,
            "secret_access_key": keys[1] if keys else None,
        }
    return job


@operation()
def weights(plan: HostPlan, location: WeightsLocation) -> Commands:
    """
    Download a checkpoint as the service user into the cache before anything starts (skipped
    when complete), or check a local path holds it.

    + plan: the host's plan (where the weights come from)
    + location: the checkpoint and where it goes

    **Example:**

    .. code:: python

        for location in each(host_work(plan).weights):
            weights(name="Fetch the weights", plan=plan, location=location)
    """
    state = view(host_work(plan).spec())
    if location.kind == "local":
        config = f"{location.directory}/config.json"
        if (state["paths"].get(config) or {}).get("type") == "file":
            host.noop(f"{location.description} is at {location.directory}")
            return
        yield failure(
            f"servekit: {host.name}: weights of {location.checkpoint} not found: {config} is "
            "missing. Fix: put the checkpoint there (a local path source is read in place, "
            "never downloaded), or mount the share that holds it"
        )
        return
    assert location.marker is not None
    if (state["paths"].get(location.marker) or {}).get("type") == "file":
        host.noop(f"{location.description} is downloaded")
        return
    try:
        job = weights_job(plan, location)
    except SecretError as error:
        yield failure(f"servekit: {host.name}: {error}")
        return
    announce(f"download {location.description} into {location.directory or LAYOUT.hf_home}")
    command = python_command("fetch_weights", python=f"{LAYOUT.tools_venv}/bin/python")
    as_user = shell.join(
        ["runuser", "-u", LAYOUT.user, "--", "env", f"HOME={LAYOUT.home}",
         f"HF_HOME={LAYOUT.hf_home}"]
    )  # fmt: skip
    yield streamed(StringCommand(as_user, command), stdin=stdin_json(job))
    stale()
