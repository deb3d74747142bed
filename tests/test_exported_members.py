"""The public API is what ``dee.__all__`` says, sorted, and every name is importable."""

from __future__ import annotations

import dee


def test_all_is_sorted_and_unique() -> None:
    assert list(dee.__all__) == sorted(set(dee.__all__))


def test_every_export_exists_and_nothing_public_is_left_out() -> None:
    exported = set(dee.__all__)
    for name in exported:
        assert hasattr(dee, name), name
    public = {
        name
        for name, value in vars(dee).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("dee")
    }
    assert public <= exported, public - exported
