"""The ``dee`` command: plans and runs commands, output, and ``dee dev`` with its catcher."""
