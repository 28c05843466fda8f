"""Test doubles for external services, built from their published APIs."""
