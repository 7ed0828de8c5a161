"""Mutants of the pagination guards killed: `same_page` compares origin, path and parameters; progress resets the stall count to zero."""

from __future__ import annotations

import pytest

from exporter.api.pagination import STALL_PAGES, ChainGuard, same_page
from exporter.core.errors import ResponseError

BASE = "https://api.example.test/api/v2/sequenceSteps"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (f"{BASE}?a=1&b=2", f"{BASE}?b=2&a=1", True),  # parameter order does not matter
        (f"{BASE}?a=1", "https://other.example.test/api/v2/sequenceSteps?a=1", False),
        (f"{BASE}?a=1", "https://api.example.test/api/v2/mailings?a=1", False),
        (f"{BASE}?a=1", f"{BASE}?a=2", False),
        (f"{BASE}?a=&b=1", f"{BASE}?b=1", False),  # a blank parameter is a parameter
        (f"{BASE}?a=%2F", "https://api.example.test/api/v2/sequence%53teps?a=/", True),
    ],
)
def test_same_page(a: str, b: str, expected: bool) -> None:
    """Bugs caught: any one of the three comparisons in `same_page` negated or dropped."""
    assert same_page(a, b) is expected


def test_a_page_with_new_records_resets_the_stall_count_to_zero() -> None:
    """Bug caught: `self._stalled = 0 if new_records` written as 1: after one page of progress,
    STALL_PAGES - 1 empty pages are still allowed, the next one is refused."""
    guard = ChainGuard(f"{BASE}?p=0")
    guard.follow(f"{BASE}?p=0", f"{BASE}?p=1", 5)
    for n in range(1, STALL_PAGES):
        guard.follow(f"{BASE}?p={n}", f"{BASE}?p={n + 1}", 0)
    with pytest.raises(ResponseError, match=f"{STALL_PAGES} pages in a row brought no new"):
        guard.follow(f"{BASE}?p={STALL_PAGES}", f"{BASE}?p={STALL_PAGES + 1}", 0)


def test_a_blank_parameter_makes_another_page() -> None:
    """Bug caught: `keep_blank_values=False` in `_page_key`: `?p=1&fields=` would count as a
    cycle back to `?p=1`."""
    guard = ChainGuard(f"{BASE}?p=1")
    guard.follow(f"{BASE}?p=1", f"{BASE}?p=1&fields[x]=", 5)
