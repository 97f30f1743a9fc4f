"""Presentation: tables, JSON, byte and time formatting, state views, progress lines.

Depends on the core only; used by the CLI and the history tools, never by the daemon's decisions.
"""
