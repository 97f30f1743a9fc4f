"""Forgetting rejections whose manifest is gone: the stopped-daemon case.

While the daemon runs, deleting a manifest sends a `PodRemovalRequested` that drops its
rejection. A manifest deleted while the daemon was stopped sends nothing, so without this its
rejection would stay in `status` and in `memstate_rejected_pods` forever. At the end of
readmission every file of the manifest directory has been read again; a rejection whose source
is a file of that directory that no longer exists is forgotten through the same input event,
recorded in the log like any other (replay and the state hash of existing logs are unchanged:
the reducer's rules are the same, only the shell sends one more input).
"""

from __future__ import annotations

from pathlib import Path

from memstate.core.events import PodRemovalRequested
from memstate.core.state import State


def forget_vanished_rejections(state: State, manifest_dir: Path) -> list[PodRemovalRequested]:
    """Removal requests for the rejections whose manifest file in `manifest_dir` is gone."""
    requests: list[PodRemovalRequested] = []
    directory = manifest_dir.absolute()
    for key in sorted(state.rejections):
        rejection = state.rejections[key]
        source = Path(rejection.source) if rejection.source else None
        if source is None or source.absolute().parent != directory or source.exists():
            continue
        # A UID that is also a running or deferred pod must not be removed with it: then only
        # the file-keyed rejection (if any) is dropped.
        live = rejection.uid in state.pods or rejection.uid in state.deferred
        uid = "" if live else rejection.uid
        if live and key == rejection.uid:
            continue
        requests.append(
            PodRemovalRequested(uid=uid, source=rejection.source, pod_source="manifests")
        )
    return requests
