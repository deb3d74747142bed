"""Alembic migrations for the plan registry's database.

Run by :func:`dee.registry.upgrade_database` and whenever a registry opens.
"""
