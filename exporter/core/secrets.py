"""Secrets: a value that never prints itself, and the characters a credential may hold."""

from __future__ import annotations


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def header_safe(text: str) -> bool:
    """Whether `text` can travel in an HTTP header or a form field as is: printable ASCII, no
    space, no control character (a pasted CR/LF would otherwise inject a header)."""
    return all("!" <= c <= "~" for c in text)


CREDENTIAL_RULE = "printable ASCII without spaces or control characters (check what was pasted)"
