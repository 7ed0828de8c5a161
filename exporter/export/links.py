"""The relationships of the root type a walk follows (`Link`), as `--relationships` selects them."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.core.config import DEFAULT_ROOT_TYPE
from exporter.core.errors import UsageError
from exporter.model.normalize import table_layout
from exporter.model.schema import Shape, resource_type


@dataclass(frozen=True)
class Link:
    """One relationship of the root type (the step) that the walk follows."""

    name: str  # relationship name on the root type
    target: str  # JSON:API type of the related records
    column: str | None  # step column holding the ids (None for link-only)
    many: bool  # the column is a list of ids

    @property
    def link_only(self) -> bool:
        return self.column is None


def step_links(root: str = DEFAULT_ROOT_TYPE) -> list[Link]:
    """Every relationship of the root type, from the schema, with its column in the root's table."""
    layout = table_layout(root)
    columns = {c.relationship.name: c.column for c in (*layout.to_one, *layout.to_many)}
    links = []
    for rel in resource_type(root).relationships:
        if rel.shape is Shape.LINKS:
            links.append(Link(rel.name, rel.target, None, True))
        else:
            links.append(Link(rel.name, rel.target, columns[rel.name], rel.shape is Shape.TO_MANY))
    return links


def parse_selection(text: str, root: str = DEFAULT_ROOT_TYPE) -> list[Link]:
    """`all`, `none`, or a comma list of relationship names (or target types, e.g. `users`) of
    the root type."""
    links = step_links(root)
    value = text.strip()
    if value in ("", "all"):
        return links
    if value == "none":
        return []
    chosen: list[Link] = []
    for name in (part.strip() for part in value.split(",")):
        if not name:
            continue
        matches = [
            link
            for link in links
            if name in (link.name, link.target, resource_type(link.target).collection)
        ]
        if not matches:
            known = ", ".join(sorted(link.name for link in links))
            raise UsageError(
                f"--relationships: unknown relationship {name!r}; known: all, none, {known}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def step_back_link(target: str, root: str = DEFAULT_ROOT_TYPE) -> Link | None:
    """For a type whose records name their step (a to-one relationship named after the root
    type, with `data`), a link-only style `Link` that fetches them by `filter[<root>][id]`; None
    for other types."""
    for column in table_layout(target).to_one:
        if column.relationship.name == root and column.relationship.target == root:
            return Link(root, target, None, True)
    return None


def owner_column(root: str) -> str:
    """The column of a link-only type's table naming the root record it belongs to
    (`sequenceStepId`: the to-one relationship named after the root, as `normalize` names it)."""
    return f"{root}Id"
