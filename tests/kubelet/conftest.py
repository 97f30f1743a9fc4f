"""The daemon harness's fixtures, for the import and shadow tests."""

from tests.daemon.conftest import make_node

__all__ = ["make_node"]
