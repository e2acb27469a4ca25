"""Fault injection at botocore's `before-send` event: AWS errors as the real API returns them.

A rule looks at each EC2 request (its action and form parameters) and may answer it with an
error code; the answer is a real HTTP response (status and EC2 error XML), so botocore's retry
logic sees it exactly as it would see AWS. Requests are recorded for assertions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

Params = dict[str, str]
Rule = Callable[[str, Params], str | None]
SERVER_ERRORS = {"InsufficientInstanceCapacity", "InternalError", "Unavailable"}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def error_response(url: str, code: str) -> AWSResponse:
    status = 500 if code in SERVER_ERRORS else 400
    body = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>injected {code}</Message>"
        "</Error></Errors><RequestID>fault</RequestID></Response>"
    ).encode()
    return AWSResponse(url, status, {"Content-Type": "text/xml"}, _Raw(body))


class SimulatedCrash(BaseException):
    """The process dying between two steps: nothing servekit catches or cleans up after."""


@dataclass
class Faults:
    rules: list[Rule] = field(default_factory=list)
    sent: list[tuple[str, Params]] = field(default_factory=list)
    crash_after_actions: list[str] = field(default_factory=list)
    hidden_instances: set[str] = field(default_factory=set)

    def session(self) -> boto3.Session:
        """A session whose clients pass every EC2 request through the rules."""
        session = boto3.Session()
        session.events.register("before-send.ec2", self._before_send)
        session.events.register("after-call.ec2", self._after_call)
        return session

    def crash_after(self, action: str) -> None:
        """Die right after the next successful `action` (AWS did it; servekit never heard)."""
        self.crash_after_actions.append(action)

    def _after_call(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in self.crash_after_actions:
            self.crash_after_actions.remove(model.name)
            raise SimulatedCrash(model.name)
        if model.name == "DescribeInstances" and self.hidden_instances:
            # Eventual consistency: a new instance is not listed yet.
            for reservation in parsed.get("Reservations", []):
                reservation["Instances"] = [
                    i
                    for i in reservation["Instances"]
                    if i["InstanceId"] not in self.hidden_instances
                ]

    def _before_send(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        body = request.body or b""
        text = body.decode() if isinstance(body, bytes) else str(body)
        params = dict(parse_qsl(text))
        action = params.get("Action", "")
        self.sent.append((action, params))
        if action == "RunInstances":
            self.hidden_instances.clear()
        for rule in self.rules:
            code = rule(action, params)
            if code:
                return error_response(request.url, code)
        return None

    def launches(self) -> list[Params]:
        return [p for action, p in self.sent if action == "RunInstances"]


def no_capacity(zones: set[str], types: set[str] | None = None) -> Rule:
    """InsufficientInstanceCapacity for launches in `zones` (of `types`, default any)."""

    def rule(action: str, params: Params) -> str | None:
        if action != "RunInstances" or params.get("Placement.AvailabilityZone") not in zones:
            return None
        if types is not None and params.get("InstanceType") not in types:
            return None
        return "InsufficientInstanceCapacity"

    return rule


def for_node(params: Params, node: str) -> bool:
    """Whether a RunInstances request is tagged for `node`."""
    return any(k.startswith("TagSpecification") and v == node for k, v in params.items())


def error_for(action_name: str, code: str, when: Callable[[Params], bool] = lambda _: True) -> Rule:
    def rule(action: str, params: Params) -> str | None:
        return code if action == action_name and when(params) else None

    return rule
