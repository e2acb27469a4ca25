"""What a benchmark was asked to do: the scenario, prompt and output lengths, load and limits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from servekit.bench.load import LoadShape
from servekit.bench.schema import Scenario, Slo


@dataclass
class Options:
    """What the user asked for."""

    scenario: Scenario = "single"
    input_len: int = 512
    output_len: int = 2048
    users: int = 100
    max_users: int = 256
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_prompts: int | None = None
    duration_s: float | None = None
    timeout_s: float = 300.0
    seed: int = 0
    slo: Slo = field(default_factory=Slo)
    endpoint: str = "auto"
    label: str | None = None

    def levels(self) -> list[LoadShape]:
        """The load levels of the scenario, in order."""
        count = self.num_prompts if self.duration_s is None else None
        if self.scenario == "rate":
            assert self.request_rate is not None
            return [
                LoadShape(
                    request_rate=self.request_rate,
                    burstiness=self.burstiness,
                    max_concurrency=self.max_concurrency,
                    num_prompts=count if count or self.duration_s else 200,
                    duration_s=self.duration_s,
                )
            ]
        if self.scenario == "sweep":
            users = [2**k for k in range(int(math.log2(self.max_users)) + 1)]
        else:
            users = [1 if self.scenario == "single" else self.users]
        return [
            LoadShape(
                users=n,
                num_prompts=count if count or self.duration_s else default_prompts(n),
                duration_s=self.duration_s,
            )
            for n in users
        ]


def default_prompts(users: int) -> int:
    """Requests per closed-loop level when neither --num-prompts nor --duration is given."""
    return 4 if users == 1 else 2 * users
