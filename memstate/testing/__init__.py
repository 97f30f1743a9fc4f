"""Oracles and fakes for tests, ours and users' (like ``trio.testing``).

Nothing in the product imports this package; it may import every layer but the CLI.
`protection` checks the protection invariant (no parent protects less than its children) over
a simulator journal or an observed tree.
"""

from memstate.testing.protection import (
    check_protection,
    protection_shortfalls,
    protection_violations,
)

__all__ = ["check_protection", "protection_shortfalls", "protection_violations"]
