"""Runs: run and activity models, client API, Temporal connection, send ledger, tokens."""
