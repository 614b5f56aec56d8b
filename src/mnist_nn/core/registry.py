"""Named registries (datasets, models, recipes): one lookup, one error message for an unknown name."""

from __future__ import annotations

from typing import Generic, TypeVar

from mnist_nn.core.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict from name to item whose ``lookup`` turns an unknown name into a UserError listing the known ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        self[name] = item
        return item

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self))
            raise UserError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None
