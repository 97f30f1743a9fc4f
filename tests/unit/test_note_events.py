"""Every note kind is classified as one by the reducer's fast paths, and is one.

Goal: `events.NOTE_EVENTS` (the kinds whose role is "note") is joined into each of the
reducer's classifications (`_NO_STATE_EFFECT`, `_DECIDED_WITHOUT_MACHINE`,
`_APPLIED_WITHOUT_MACHINE`), so a note kind added to the catalogue is classified without
anyone remembering three lists; and a note does what those classifications promise: `decide`
implies nothing, `apply`, `apply_owned`, a `WorkingState` and `Folder` leave the state as it
is. Method: one instance of every note kind of the catalogue, built from its fields' types,
against a ready state holding an admitted pod.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from memstate.core import reducer
from memstate.core.events import (
    EVENT_TYPES,
    NOTE_EVENTS,
    ConfigLoaded,
    Event,
    PodAdmissionRequested,
    TopologyObserved,
)
from memstate.core.state import State, encode_state
from tests.factories import Gi, pod, static_config, topology

_VALUES: dict[Any, Any] = {str: "x", int: 1, bool: False}


def an_instance(kind: type[Event]) -> Event:
    """An instance of `kind` with a value of its type in every field."""
    return kind(**{f.name: _VALUES[f.type] for f in msgspec.structs.fields(kind)})


def ready_state() -> State:
    state = State()
    for event in (
        TopologyObserved(topology=topology(4 * Gi)),
        ConfigLoaded(config=static_config([Gi])),
        PodAdmissionRequested(pod=pod("a", Gi), source="a.yaml"),
    ):
        state = reducer.step(state, event).state
    assert state.pods
    return state


def test_the_notes_are_the_kinds_whose_role_is_note() -> None:
    notes = {kind for kind in EVENT_TYPES if kind.role == "note"}
    assert notes == NOTE_EVENTS
    assert len(NOTE_EVENTS) >= 7  # config_rejected, shadow_disagreement, the log and cgroup notes


@pytest.mark.parametrize("kind", sorted(NOTE_EVENTS, key=lambda k: k.__name__))
def test_every_note_kind_is_classified_and_changes_nothing(kind: type[Event]) -> None:
    assert kind in reducer._NO_STATE_EFFECT
    assert kind in reducer._DECIDED_WITHOUT_MACHINE
    assert kind in reducer._APPLIED_WITHOUT_MACHINE
    note = an_instance(kind)
    state = ready_state()
    before = encode_state(state)
    assert reducer.decide(state, note) == ()
    assert reducer.apply(state, note) is state
    working = reducer.WorkingState(state)
    assert working.decide(note) == ()
    working.apply(note)
    assert encode_state(working.state()) == before
    folder = reducer.Folder(state)
    folder.fold(note)
    assert encode_state(folder.state()) == before
    assert encode_state(state) == before
