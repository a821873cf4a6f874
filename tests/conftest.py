"""Shared fixtures and helpers for every test package (tests/mpc, tests/protocols, ...)."""
