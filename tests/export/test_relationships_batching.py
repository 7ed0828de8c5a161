"""Unit: the walk's column-wise id sets, batch cuts and learning agree with one-id-at-a-time oracles."""

from __future__ import annotations

import math
import random
from array import array

import numpy as np
import pytest

from exporter.export.idset import IdSet
from exporter.export.relationships import SPILL_SIGMAS, GroupStats, TargetState, steps_that_fill


@pytest.mark.parametrize("seed", range(2))
def test_id_set_pages_agree_with_a_python_set(seed: int) -> None:
    """Pages of ids (`add_new`) and single ids (`add`) mixed, across several merges of the
    small tiers into the sorted array: every answer is a Python set's."""
    rng = random.Random(seed)
    ids, oracle = IdSet(rng.sample(range(50_000), 300)), set[int]()
    oracle.update(ids)
    assert len(oracle) == 300
    for _ in range(60):
        page = [rng.randrange(60_000) for _ in range(rng.randrange(0, 700))]
        page += page[: rng.randrange(0, 20)]  # repeats within the page
        new = ids.add_new(np.array(page, np.int64))
        expected, seen = [], set()
        for value in page:
            expected.append(value not in oracle and value not in seen)
            seen.add(value)
        assert new.tolist() == expected
        oracle.update(page)
        for value in (rng.randrange(60_000) for _ in range(rng.randrange(0, 50))):
            assert ids.add(value) == (value not in oracle)
            oracle.add(value)
        probe = np.array([rng.randrange(-5, 61_000) for _ in range(200)], np.int64)
        assert ids.holds(probe).tolist() == [v in oracle for v in probe.tolist()]
        assert all((v in ids) == (v in oracle) for v in probe.tolist())
    assert len(ids) == len(oracle)
    assert list(ids) == sorted(oracle)
    assert len(oracle) > 4 * 4096  # past the first merges of the small tiers into the array


def test_group_stats_merged_by_batch_equal_the_sample_moments() -> None:
    """Counts learnt a batch at a time give the mean and (n-1) variance of all of them."""
    rng = random.Random(7)
    stats, everything = GroupStats(), []
    for size in (1, 5, 0, 30, 200, 3):
        counts = [rng.choice([0, 0, 1, 2, 3, 40]) for _ in range(size)]
        stats.add_all(np.array(counts, np.int64))
        everything += counts
    assert stats.steps == len(everything) == 239
    mean = sum(everything) / len(everything)
    variance = sum((c - mean) ** 2 for c in everything) / (len(everything) - 1)
    assert stats.estimate() == pytest.approx((mean, variance), rel=1e-12)


def _state(
    ids: list[int], groups: list[int], learnt: dict[int, list[int]], head: int
) -> TargetState:
    state = TargetState("mailing", link_only=True)
    state.ids = array("q", ids)
    state.groups = array("b", groups)
    state.head = head
    for code, counts in learnt.items():
        state.learnt.setdefault(code, GroupStats()).add_all(np.array(counts, np.int64))
    return state


def _step_by_step(state: TargetState, room: int, page_size: int) -> int:
    """The cut walked one step at a time (the walk's loop before it worked on columns)."""
    estimates = {code: s.estimate() for code, s in state.learnt.items()}
    default = GroupStats().estimate()
    ids, groups = state.ids, state.groups
    stop, used, mean, variance, pages = state.head, 0, 0.0, 0.0, 1
    while stop < len(ids):
        cost = len(str(ids[stop])) + 1
        if used + cost > room:
            break
        m, v = estimates.get(groups[stop], default)
        if mean + m + SPILL_SIGMAS * math.sqrt(variance + v) > pages * page_size:
            more, fill_used, can_fill = 0.0, used, False
            for index in range(stop, len(ids)):
                fill_used += len(str(ids[index])) + 1
                if fill_used > room:
                    break
                more += estimates.get(groups[index], default)[0]
                if more >= 0.9 * page_size:
                    can_fill = True
                    break
            if not can_fill:
                break
            pages += 1
        mean += m
        variance += v
        used += cost
        stop += 1
    return stop - state.head


@pytest.mark.parametrize("seed", range(40))
def test_link_only_cuts_match_the_step_by_step_loop(seed: int) -> None:
    """Where the URL fills, where a page would spill and whether one more page can be filled:
    the same cut as the loop that walked each step, for ids of every length, negative ones,
    groups learnt or not, and URLs from a few bytes to several pages' worth."""
    rng = random.Random(seed)
    count = rng.randrange(1, 3000)
    ids = [rng.choice([rng.randrange(1, 10**rng.randrange(1, 19)), -rng.randrange(1, 999)])
           for _ in range(count)]  # fmt: skip
    groups = [rng.randrange(0, 4) for _ in range(count)]
    learnt = {
        code: [rng.choice([0, 0, 1, 1, 2, 5, 30]) for _ in range(rng.randrange(0, 80))]
        for code in rng.sample(range(4), rng.randrange(0, 5))
    }
    state = _state(ids, groups, learnt, head=rng.randrange(0, count))
    room = rng.choice([0, 1, 5, 40, 400, 2000, 8000, 30000])
    page_size = rng.choice([1, 10, 100, 1000])
    expected = _step_by_step(state, room, page_size)
    assert steps_that_fill(state, room, page_size) == expected


def test_a_cut_opens_a_page_it_can_fill_and_stops_before_one_it_cannot() -> None:
    """Exactly ten records per step, pages of 100: ten steps fill a page. A long URL carries
    the nine more steps that make the next page worth opening; 36 bytes carry 15 steps
    (ids 1-9 at two bytes, 10-15 at three), which cannot fill a second page: cut at ten."""
    learnt = {0: [10] * 50}
    state = _state(list(range(1, 1001)), [0] * 1000, learnt, head=0)
    assert steps_that_fill(state, room=8000, page_size=100) > 100  # several pages opened
    assert steps_that_fill(state, room=36, page_size=100) == 10
    assert steps_that_fill(state, room=38, page_size=100) == 10  # 16 steps: still not 19
    state.learnt[0] = GroupStats()
    state.learnt[0].add_all(np.array([5] * 50, np.int64))  # five a step: twenty fill a page
    assert steps_that_fill(state, room=36, page_size=100) == 15  # the URL is full first


def test_a_page_is_opened_when_the_url_carries_exactly_enough_to_fill_it() -> None:
    """Ten records a step, pages of 100: a second page is worth opening at 90 expected records.
    48 bytes carry ids 1-19, nine steps past the first page's ten (90: opened, all 19 go);
    47 bytes carry 18 (80: cut at ten)."""
    state = _state(list(range(1, 1001)), [0] * 1000, {0: [10] * 50}, head=0)
    assert steps_that_fill(state, room=48, page_size=100) == 19
    assert steps_that_fill(state, room=47, page_size=100) == 10


def test_a_step_larger_than_a_page_opens_one_page_at_a_time() -> None:
    """A step expected to bring 250 records, then steps of one: the first opens one more page,
    not three, so the second spills (251 > 200) and, with too few steps behind it to fill a
    page, the batch is cut after the first."""
    ids, groups = list(range(1, 1001)), [0] + [1] * 999
    state = _state(ids, groups, {0: [250] * 30, 1: [1] * 30}, head=0)
    assert steps_that_fill(state, room=2 * 9 + 3 * 41, page_size=100) == 1
