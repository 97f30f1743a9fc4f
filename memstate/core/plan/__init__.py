"""The reconcile planner: desired targets × observed tree → an ordered, dependency-tagged plan.

One module per part, each importable on its own; this package re-exports the public names:

- `values`: cgroup files and their values — which kind a file is, kernel defaults, and
  `ValueModel`, the kernel-normalised comparison every other part uses;
- `model`: what the planner reads and returns (`ObservedTree`, `Operation`, `Plan`, `FileDiff`)
  and how an observation changes (`apply_operations`, `merge_observations`);
- `scope`: what is managed — the naming of the targets, usable and blocked files, pod cgroups
  no target explains;
- `planner`: `plan_operations`, the ordering rules and why (its module docstring), and
  `plan_settled`, a full plan with the cgroups it found settled;
- `settled`: what a full plan found settled, so the next full plan need not plan it again;
- `diff`: `diff_tree`, the managed files side by side with the live tree, without planning;
- `containers`: which directories under a pod cgroup are which container, and their targets;
- `profile`: `WriteProfile`, what memstate may create, remove and write per ownership and mode.
"""

from memstate.core.cgroup_values import EMPTY_WRITE
from memstate.core.plan.diff import diff_tree
from memstate.core.plan.model import (
    PHASES,
    FileDiff,
    ObservedCgroup,
    ObservedTree,
    Operation,
    OperationKind,
    Phase,
    Plan,
    PodRemoval,
    Removal,
    RemovalAction,
    RemovalKind,
    TreeChange,
    apply_operations,
    closed_cgroups,
    join_path,
    merge_observations,
    recorded_edit,
    touched_since,
)
from memstate.core.plan.planner import plan_operations, plan_settled
from memstate.core.plan.profile import STANDALONE, WriteProfile, profile_targets
from memstate.core.plan.scope import check_target_tree, naming_config
from memstate.core.plan.values import (
    CGROUP_CONTROLLERS,
    CGROUP_EVENTS,
    CGROUP_KILL,
    DEFAULT_CPUSET_BITS,
    KERNEL_DEFAULTS,
    PROTECTION_FILES,
    SUBTREE_CONTROL,
    UNLIMITED,
    ZERO,
    FileKind,
    ValueModel,
    file_controller,
    file_kind,
    kernel_default,
    value_model,
)

__all__ = [
    "CGROUP_CONTROLLERS",
    "CGROUP_EVENTS",
    "CGROUP_KILL",
    "DEFAULT_CPUSET_BITS",
    "EMPTY_WRITE",
    "KERNEL_DEFAULTS",
    "PHASES",
    "PROTECTION_FILES",
    "STANDALONE",
    "SUBTREE_CONTROL",
    "UNLIMITED",
    "ZERO",
    "FileDiff",
    "FileKind",
    "ObservedCgroup",
    "ObservedTree",
    "Operation",
    "OperationKind",
    "Phase",
    "Plan",
    "PodRemoval",
    "Removal",
    "RemovalAction",
    "RemovalKind",
    "TreeChange",
    "ValueModel",
    "WriteProfile",
    "apply_operations",
    "check_target_tree",
    "closed_cgroups",
    "diff_tree",
    "file_controller",
    "file_kind",
    "join_path",
    "kernel_default",
    "merge_observations",
    "naming_config",
    "plan_operations",
    "plan_settled",
    "profile_targets",
    "recorded_edit",
    "touched_since",
    "value_model",
]
