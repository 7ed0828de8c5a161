"""Unit tests of the error taxonomy: classification, error documents, URL redaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.core.errors import (
    ApiError,
    RetriableError,
    StatusClass,
    classify_status,
    clean_text,
    error_details,
    redact_url,
    remember_secret,
)


@pytest.mark.parametrize(
    ("status", "size", "expected"),
    [
        (200, 1000, StatusClass.OK),
        (429, 1000, StatusClass.RATE_LIMITED),
        (401, 1000, StatusClass.REFRESH),
        (502, 1000, StatusClass.SMALLER_PAGE),
        (502, 1, StatusClass.RETRY),
        (502, None, StatusClass.RETRY),
        (503, 1000, StatusClass.RETRY),
        (500, 1000, StatusClass.RETRY),
        (400, 1000, StatusClass.FATAL),
        (403, 1000, StatusClass.FATAL),
        (404, 1000, StatusClass.FATAL),
        (415, 1000, StatusClass.FATAL),
    ],
)
def test_classify_status(status: int, size: int | None, expected: StatusClass) -> None:
    assert classify_status(status, size) is expected


def test_error_details_reads_both_spellings() -> None:
    assert error_details({"errors": [{"id": "x", "detail": "d"}]}) == ("x", "d")
    assert error_details({"errors": [{"id": "y", "details": "dd"}]}) == ("y", "dd")
    assert error_details("<html>") == (None, None)
    assert error_details({"errors": []}) == (None, None)


def test_redact_url_strips_credentials() -> None:
    url = "https://user:pw@api.example:8443/x?access_token=SECRET&page[size]=5"
    shown = redact_url(url)
    assert "SECRET" not in shown and "pw" not in shown and "user" not in shown
    assert "page" in shown and "8443" in shown


def test_api_error_message_has_no_secret() -> None:
    error = ApiError("boom", url="http://h/x?refresh_token=TOPSECRET", status=500, error_id="e1")
    assert "TOPSECRET" not in str(error)
    assert "status 500" in str(error) and "'e1'" in str(error)


def test_api_error_cleans_everything_it_is_given() -> None:
    """Bug caught: only `detail` was scrubbed; the id (and a message quoting the API) went out
    verbatim, line breaks and all."""
    remember_secret("Tok-91c2e")
    error = ApiError(
        "the API said: Bearer Tok-91c2e\r\nERROR forged \x1b[31mline\u2028more",
        error_id="Bearer Tok-91c2e\n",
        url="http://h/x?a=Tok-91c2e",
        status=400,
    )
    text = str(error)
    assert "Tok-91c2e" not in text and text.isprintable() and "***" in text
    assert error.error_id is not None and "Tok-91c2e" not in error.error_id
    retriable = RetriableError("x" * 5000 + "\nTok-91c2e", error_id="Tok-91c2e")
    assert str(retriable).isprintable() and len(str(retriable)) < 1100
    assert "Tok-91c2e" not in str(retriable) and retriable.error_id == "***"


@given(st.text(max_size=3000))
def test_clean_text_is_one_printable_bounded_line(text: str) -> None:
    cleaned = clean_text(text, 300)
    assert cleaned.isprintable() and len(cleaned) <= 300 + len("...(9999 more characters)")
