"""Helpers shared by DEE's tests: plan builders and database set-up."""
