"""What operations remember in a pyinfra run is held per `State` and pass: a new run (or the
execution pass after the change-detection pass) starts empty, and a finished run's record goes
away with its `State`."""

from __future__ import annotations

import gc

from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host

from servekit.operations import runstate


def fake_state() -> State:
    return State(inventory=Inventory((["@fake/a"], {})), config=Config())


def test_each_run_and_pass_has_its_own_record() -> None:
    first, second = fake_state(), fake_state()
    with ctx_host.use(first.inventory.get_host("@fake/a")):
        runstate.this_host().venv_rebuilt = True
        runstate.rollout().stopped_by = "chat replica 0"
        assert runstate.this_host().venv_rebuilt
        first.is_executing = True  # the execution pass after the change-detection pass
        assert not runstate.this_host().venv_rebuilt
        assert runstate.rollout().stopped_by is None
    with ctx_host.use(second.inventory.get_host("@fake/a")):
        assert not runstate.this_host().venv_rebuilt
        assert runstate.rollout().stopped_by is None


def test_a_finished_run_leaves_nothing_behind() -> None:
    state = fake_state()
    with ctx_host.use(state.inventory.get_host("@fake/a")):
        runstate.this_host().ray_restarted = True
    before = len(runstate._BY_STATE)
    del state
    gc.collect()
    assert len(runstate._BY_STATE) <= before - 1
