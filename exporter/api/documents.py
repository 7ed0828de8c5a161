"""JSON:API documents: a body checked and parsed into a document, and a collection page's records."""

from __future__ import annotations

from typing import Any

import orjson

from exporter.core.errors import ResponseError, RetriableError


def json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def check_json_content(content_type: str) -> None:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind and "json" not in kind:
        raise RetriableError(f"a {kind} body where JSON was expected")


def parse_document(body: bytes, content_type: str) -> dict[str, Any]:
    check_json_content(content_type)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RetriableError(f"a truncated or malformed JSON body ({len(body)} bytes)") from None
    if not isinstance(document, dict):
        raise RetriableError("a JSON body that is not an object")
    return document


def page_records(document: Any, url: str) -> list[Any]:
    """The `data` array of a collection page."""
    if not isinstance(document, dict):
        raise ResponseError("the response is not a JSON:API document", url=url)
    data = document.get("data")
    if not isinstance(data, list):
        raise ResponseError("the response has no `data` array", url=url)
    return data
