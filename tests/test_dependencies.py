"""The dependencies pyproject.toml declares are exactly the ones memstate imports.

Goal: a fresh install has every module the product imports, and nothing is declared that no code
uses. Method: collect every absolute import in memstate/ (lazy ones too), drop the standard
library and memstate itself, map module names to distributions with importlib.metadata, and
compare with `[project] dependencies`; optional extras may only be imported where declared
(matplotlib by the audit plot).
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.architecture import imports_in

ROOT = Path(__file__).resolve().parents[1]
# Extras: distribution -> the only modules allowed to import it (imported lazily there).
OPTIONAL = {"matplotlib": {"memstate.history.audit_plot"}}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }


def imported() -> dict[str, set[str]]:
    """Distribution name -> importing modules, for every third-party import in memstate/."""
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for item in imports_in(ROOT / "memstate"):
        top = item.target.split(".")[0]
        if not top or top == "memstate" or top in sys.stdlib_module_names:
            continue
        names = distributions.get(top)
        assert names, f"{item.path}:{item.line}: {top} is not installed by any distribution"
        for name in names:
            found.setdefault(_normalise(name), set()).add(item.source)
    return found


def test_every_imported_distribution_is_declared() -> None:
    used = imported()
    missing = {
        name: sorted(modules)
        for name, modules in used.items()
        if name not in declared() and not modules <= OPTIONAL.get(name, set())
    }
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_every_declared_distribution_is_imported() -> None:
    unused = declared() - set(imported())
    assert not unused, f"declared but never imported by memstate: {sorted(unused)}"
