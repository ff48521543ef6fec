from __future__ import annotations

import edgefleet.controller as controller_package


def test_all_is_sorted_and_complete() -> None:
    exported = controller_package.__all__

    assert exported == sorted(exported)
    assert set(exported) == set(controller_package._EXPORTS)
    for name in exported:
        assert getattr(controller_package, name) is not None
