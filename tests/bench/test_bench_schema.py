"""The `--json` layout is a contract: other tools and old result files depend on it."""

from __future__ import annotations

import json
from pathlib import Path

from servekit.bench.compare import chart_data
from servekit.bench.schema import SCHEMA, BenchResult

DATA = Path(__file__).parent / "data"
SNAPSHOT = DATA / "bench-result-v1.schema.json"
# Regenerate only for an additive change (and bump SCHEMA for any other):
#   python -c "import json; from servekit.bench.schema import BenchResult; print(json.dumps(
#   BenchResult.model_json_schema(by_alias=True), indent=1, sort_keys=True))" > SNAPSHOT


def test_json_schema_is_unchanged() -> None:
    current = BenchResult.model_json_schema(by_alias=True)
    assert SCHEMA == "servekit.bench/1"
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the servekit.bench/1 layout changed: see the comment above to update the snapshot"
    )


def test_a_v1_result_file_still_reads() -> None:
    result = BenchResult.read(DATA / "sample-v1.json")
    assert result.schema_ == SCHEMA
    run = result.runs[0]
    assert run.summary.completed == len([r for r in run.requests if r.status == "ok"])
    assert chart_data([result])[result.target.label]["concurrency"] == [2.0]
    # Writing it back gives the same document.
    raw = json.loads((DATA / "sample-v1.json").read_text())
    assert json.loads(result.model_dump_json(by_alias=True)) == raw
