"""The managed files of the targets side by side with the live tree (`memstate diff`).

Computed directly from the targets and the observation, with the planner's normalisation
(`ValueModel`) and its view of what is blocked and what is an orphan (memstate.core.plan.scope):
no plan is made.
"""

from __future__ import annotations

from collections.abc import Iterable

from memstate.core.cgroup_values import CONTROLLER_ORDER, format_controller_list, kernel_strip
from memstate.core.errors import InvariantViolation
from memstate.core.plan.model import FileDiff, ObservedTree
from memstate.core.plan.profile import STANDALONE, WriteProfile, profile_targets
from memstate.core.plan.scope import (
    UndesiredPod,
    check_target_tree,
    existing,
    naming_config,
    plan_controllers,
    undesired_pod_cgroups,
)
from memstate.core.plan.values import SUBTREE_CONTROL, ValueModel, kernel_default, value_model
from memstate.core.targets import NodeTargets


def diff_tree(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str] = (),
    profile: WriteProfile = STANDALONE,
) -> tuple[FileDiff, ...]:
    """Every managed file (and each cgroup's controllers) of `targets` against `observed`, plus a
    row per undesired pod cgroup. Comparison is in kernel-normalised form. Under `profile` only
    the files it lets memstate write are managed (memstate.core.plan.profile); without
    `owns_cgroups` the controllers are not memstate's either, so they get no row.

    Raises InvariantViolation where planning would: targets that do not form a managed tree, a
    managed root that does not exist, a target value the kernel would refuse.
    """
    check_target_tree(targets)
    targets = profile_targets(targets, profile)
    if existing(observed, "") is None:
        raise InvariantViolation("the managed root does not exist")
    desired = {t.path: t for t in targets.cgroups}
    undesired = undesired_pod_cgroups(
        targets, observed, naming_config(targets), frozenset(retired_paths)
    )
    return diff_rows(
        targets,
        observed,
        values=value_model(page_size_bytes),
        blocked=plan_controllers(desired, desired, observed, enables=profile.owns_cgroups).blocked,
        undesired=undesired,
        controller_rows=profile.owns_cgroups,
    )


def diff_rows(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    values: ValueModel,
    blocked: Iterable[str],
    undesired: Iterable[UndesiredPod],
    controller_rows: bool = True,
) -> tuple[FileDiff, ...]:
    """The rows of `diff_tree`, given what is blocked (``path/file``) and the pod cgroups no
    target explains; the same inputs the planner computes (memstate.core.plan.scope)."""
    blocked = set(blocked)
    rows: list[FileDiff] = []
    for target in targets.cgroups:
        found = existing(observed, target.path)
        exists = found is not None
        if target.controllers and controller_rows:
            enabled = tuple(found.subtree_control or ()) if found is not None else ()
            wanted = format_controller_list(target.controllers).strip()
            have = format_controller_list(set(enabled) & set(CONTROLLER_ORDER)).strip()
            equal = exists and set(target.controllers) <= set(enabled)
            rows.append(
                FileDiff(
                    path=target.path,
                    file=SUBTREE_CONTROL,
                    desired=wanted,
                    observed=have if exists else None,
                    desired_normalised=wanted,
                    observed_normalised=have if exists else None,
                    equal=equal,
                    status="equal" if equal else ("differs" if exists else "missing"),
                )
            )
        for file, text in sorted(target.files.items()):
            where = f"{target.path}/{file}" if target.path else file
            desired_normalised = values.normalise(file, text)
            if desired_normalised is None and where not in blocked:
                raise InvariantViolation(f"{where}: the target {text!r} is not a valid value")
            raw = found.files.get(file) if found is not None else None
            observed_text = kernel_strip(raw) if raw is not None else None
            if exists and raw is None:
                default = kernel_default(file)
                observed_normalised = (
                    values.normalise(file, default) if default is not None else None
                )
            else:
                observed_normalised = values.normalise(file, raw) if raw is not None else None
            equal = exists and desired_normalised == observed_normalised
            if where in blocked:
                status = "blocked"
            elif not exists:
                status = "missing"
            else:
                status = "equal" if equal else "differs"
            rows.append(
                FileDiff(
                    path=target.path,
                    file=file,
                    desired=text,
                    observed=observed_text,
                    desired_normalised=desired_normalised,
                    observed_normalised=observed_normalised,
                    equal=equal,
                    status=status,
                )
            )
    for pod in undesired:
        rows.append(
            FileDiff(
                path=pod.path,
                file="",
                desired=None,
                observed="populated" if pod.populated else "present",
                desired_normalised=None,
                observed_normalised=None,
                equal=False,
                status=pod.kind,
            )
        )
    return tuple(rows)
