"""Fixtures of the contract suite: one `target` per built-in backend (tests/contract/targets.py)."""

from __future__ import annotations

import pytest

from tests.contract.targets import TARGET_FAMILIES, TARGET_NAMES, Target


@pytest.fixture(scope="session")
def targets(profiles) -> dict[str, Target]:
    found: dict[str, Target] = {}
    for family in TARGET_FAMILIES:
        for target in family(profiles):
            found[target.name] = target
    return found


@pytest.fixture(params=TARGET_NAMES)
def target(request, targets) -> Target:
    if request.param not in targets:
        raise AssertionError(f"{request.param} is in TARGET_NAMES but no family makes it")
    return targets[request.param]
