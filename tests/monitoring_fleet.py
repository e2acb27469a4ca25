"""The fleet the Grafana and dashboard tests share: a GPU host `g1` (one L4) serving Qwen 2.5 7B
and a monitoring host `mon`, with the monitoring options a test gives."""

from __future__ import annotations

from typing import Any

from servekit.spec import Fleet, Gpu, Monitoring, SecretRef, Serve, SshHost


def team_fleet(fleet_fields: dict[str, Any] | None = None, **monitoring: Any) -> Fleet:
    """The fleet with `Monitoring(host="mon", **monitoring)` and any other Fleet fields."""
    return Fleet(
        name="team",
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="mon", address="10.0.0.8"),
        ],
        serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1"])],
        monitoring=Monitoring(host="mon", **monitoring),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
        **(fleet_fields or {}),
    )
