"""`--resources`: which collections an export crawls whole (its roots), from the text a flag, variable, TOML or fleet key gives."""

from __future__ import annotations

from exporter.core.config import DEFAULT_RESOURCES
from exporter.core.errors import UsageError
from exporter.model.schema import readable_types, resource_type


def collection_names() -> list[str]:
    """Every readable collection's URL segment, in `readable_types()` order."""
    return [resource_type(t).collection for t in readable_types()]


def parse_resources(text: str = DEFAULT_RESOURCES) -> tuple[str, ...]:
    """The root types (JSON:API type names, in `readable_types()` order) that `text` selects:
    `all`, or a comma list of collection names (`prospects,accounts`). An unknown name is a
    UsageError listing the valid ones, in one line."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError("--resources: empty; name collections (e.g. sequenceSteps) or all")
    types = readable_types()
    if "all" in names:
        return types
    by_collection = {resource_type(t).collection: t for t in types}
    unknown = [n for n in names if n not in by_collection]
    if unknown:
        raise UsageError(
            f"--resources: unknown collection(s) {', '.join(repr(n) for n in unknown)}; valid: "
            f"all, {', '.join(collection_names())}"
        )
    chosen = {by_collection[n] for n in names}
    return tuple(t for t in types if t in chosen)
