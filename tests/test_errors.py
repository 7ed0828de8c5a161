"""Unit tests of the error taxonomy: classification, error documents, URL redaction."""

from __future__ import annotations

import pytest

from exporter.errors import ApiError, StatusClass, classify_status, error_details, redact_url


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
