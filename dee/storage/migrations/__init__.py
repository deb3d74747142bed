"""Alembic migrations for the plan registry's database.

Run by :func:`dee.plans.registry.upgrade_database` and whenever a registry opens.
"""
