"""URL lengths are measured as the client sends them: brackets percent-encoded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from exporter.api.pagination import collection_url, id_batches, wire_length

BASE = "http://127.0.0.1:8080/api/v2"
KEYS = ["filter[id]", "filter[sequenceStep][id]", "page[size]", "sort", "count", "fields[task]"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.text(alphabet="0123456789,-.:idsort", max_size=40),
        ),
        max_size=5,
    )
)
def test_wire_length_is_what_aiohttp_sends(params: list[tuple[str, str]]) -> None:
    """Bug caught: `wire_length` returning `len(url)`: aiohttp (yarl) sends `[` and `]` as
    `%5B` and `%5D`, so a limit checked on the readable form lets longer URLs onto the wire."""
    url = collection_url(BASE, "sequenceSteps", params)
    assert wire_length(url) == len(str(URL(url)))


def test_batches_cut_with_the_wire_room_fit_on_the_wire() -> None:
    """Each batch's URL, as sent, stays within the limit it was cut for."""
    limit = 300

    def url_for(ids: list[int]) -> str:
        return collection_url(
            BASE,
            "mailings",
            [("filter[sequenceStep][id]", ",".join(map(str, ids))), ("page[size]", "1000")],
        )

    room = limit - wire_length(url_for([])) + 1  # a comma is counted after every id
    batches = list(id_batches(list(range(10_000, 12_000)), room=room, most=1000))
    assert len(batches) > 10
    assert all(len(str(URL(url_for(batch)))) <= limit for batch in batches)
    assert max(len(str(URL(url_for(batch)))) for batch in batches) > limit - 7  # full, not timid
