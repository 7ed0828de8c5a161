"""Mutants of core/secrets.py (and errors.py's scrubbing) that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from exporter.core import errors
from exporter.core.errors import (
    ApiError,
    RetriableError,
    StatusClass,
    classify_status,
    clean_text,
    one_line,
    redact_url,
    scrub,
    shown_url,
)
from exporter.core.secrets import Secret, header_safe


def test_two_different_secrets_are_not_equal() -> None:
    """Bug: `isinstance(other, Secret) or other._value == ...` (any two secrets equal) or
    `other._value != self._value` (equal only when different): a rotated token would compare
    equal to the one it replaces, and a config that changed its credential would look unchanged."""
    assert Secret("tok-1") == Secret("tok-1")
    assert Secret("tok-1") != Secret("tok-2")
    assert Secret("tok-1") != "tok-1"  # a plain string holding the value is not the secret


def test_header_safe_keeps_the_whole_printable_ascii_range() -> None:
    """Bug: `"!" < c <= "~"`: a credential holding `!` (legal in a client secret) refused as
    damaged. The edges of the range are checked on both sides, and what lies just outside."""
    assert header_safe("!abc~")
    assert header_safe("!")
    assert header_safe("~")
    assert not header_safe("a b")  # space: one below "!"
    assert not header_safe("a\x7fb")  # DEL: one above "~"
    assert not header_safe("tok\r\nX-Injected: 1")


def test_scrub_replaces_the_longer_secret_first() -> None:
    """Bug: secrets scrubbed shortest first (`reverse=False`): a token that contains another
    secret would be cut in two and its tail printed."""
    long, short = "abcdef123456", "abcdef"
    assert scrub(f"token {long} here", [short, long]) == "token *** here"
    assert "123456" not in scrub(long, [short, long])


def test_a_remembered_secret_is_scrubbed_from_every_error() -> None:
    """Bugs: `remember_secret` not adding (`if not secret`), `clean_text` not passing the known
    secrets, an `ApiError` or `RetriableError` message not cleaned: the server's text quoting
    our token would print it."""
    errors.remember_secret("sekrit-token-99")
    errors.remember_secret("")  # an empty secret is not one: scrubbing "" would mangle every text
    assert clean_text("bad token sekrit-token-99") == "bad token ***"
    assert clean_text("a plain message") == "a plain message"
    api = ApiError("rejected sekrit-token-99", error_id="id sekrit-token-99", status=401)
    assert "sekrit" not in str(api) and "sekrit" not in (api.error_id or "")
    assert str(api) == "rejected ***; status 401; error id 'id ***'"
    retry = RetriableError("slow sekrit-token-99", error_id="sekrit-token-99")
    assert str(retry) == "slow ***" and retry.error_id == "***"


def test_redact_url_hides_only_the_secret_parameters_and_keeps_the_port() -> None:
    """Bugs: the port dropped (`is not None` flipped), secret names matched case-sensitively
    or every value hidden (`in` flipped): the URL shown would point elsewhere or hide the id."""
    shown = urlsplit(redact_url("https://u:pw@api.example:8443/x?Access_Token=ab&page[size]=5"))
    assert (shown.netloc, shown.path) == ("api.example:8443", "/x")
    assert parse_qsl(shown.query) == [("Access_Token", "***"), ("page[size]", "5")]
    assert redact_url("https://api.example/x?id=7") == "https://api.example/x?id=7"
    assert redact_url("https://api.example/x") == "https://api.example/x"


def test_one_line_keeps_a_text_of_exactly_the_limit_whole() -> None:
    """Bug: `len(text) > limit` as `>=`: a quote of exactly the limit would gain a
    "...(0 more characters)" tail; one character more is cut with its count."""
    assert one_line("x" * 40, 40) == "x" * 40
    assert one_line("x" * 41, 40) == "x" * 40 + "...(1 more characters)"


def test_shown_url_shortens_only_long_query_values() -> None:
    """Bugs: `if not sep` as `if sep` (a URL with a query shown whole, one without given a
    stray "?"), a shortened pair not kept (`pairs.append` deleted), `len(value) >
    longest_value` as `>=` (a value of exactly the bound cut)."""
    ids = ",".join(str(n) for n in range(1000, 1100))  # a batch's filter: 499 characters
    exact = "y" * 25
    shown = shown_url(f"https://api.example/prospects?filter[id]={ids}&q={exact}&page[size]=5", 25)
    shortened = f"{ids[:25]}...({len(ids) - 25} more characters)"
    assert shown == f"https://api.example/prospects?filter[id]={shortened}&q={exact}&page[size]=5"
    assert shown_url("https://api.example/prospects") == "https://api.example/prospects"


def test_an_api_error_shows_its_hint_cleaned() -> None:
    """Bug: the hint left out of the message (`parts.append(clean_text(hint, ...))` deleted):
    the advice after the last retry ("run the same command again later") would be lost."""
    errors.remember_secret("sekrit-hint-3")
    error = ApiError("gave up", status=503, hint="run again; sekrit-hint-3\nforged")
    assert str(error) == "gave up; status 503; run again; *** forged"


def test_one_line_turns_only_control_and_format_characters_into_spaces() -> None:
    """Bug: `unicodedata.category(ch) != "Cf"` as `==`: once a text holds a line break, every
    ordinary character would become a space and the message would read blank."""
    assert one_line("bad\r\nERROR forged\u202eline\x1b[31m") == "bad ERROR forged line [31m"


def test_redact_url_keeps_blank_parameters() -> None:
    """Bug: `parse_qsl(..., keep_blank_values=False)`: a URL with a secret parameter would be
    shown without its blank ones (`filter[name]=`), not the URL that was sent."""
    shown = redact_url("https://api.example/x?token=abc&filter[name]=&id=7")
    assert parse_qsl(urlsplit(shown).query, keep_blank_values=True) == [
        ("token", "***"),
        ("filter[name]", ""),
        ("id", "7"),
    ]


def test_the_status_classes_are_distinct() -> None:
    """Bug: `RETRY = 1` as 2: an IntEnum member with the value of another is an alias of it,
    so a 503 would be classified RATE_LIMITED and waited out as a rate limit (the campaign saw
    the covering tests run into their time limit instead of failing)."""
    assert len(list(StatusClass)) == len(StatusClass.__members__)
    assert classify_status(503) is StatusClass.RETRY is not StatusClass.RATE_LIMITED
