"""Deterministic workflow code only: the interpreter that runs any plan version.

Nothing here may do I/O, read the clock or draw random numbers except through Temporal's
workflow APIs; side effects live in :mod:`activities`.
"""
