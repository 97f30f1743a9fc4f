"""Shared pytest configuration for the memstate test suite."""
