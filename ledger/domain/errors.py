"""Typed errors of the domain. Each carries what a user needs to fix the input."""

from __future__ import annotations


class LedgerError(ValueError):
    """Base of every domain error; ``reason`` is a short machine-readable code."""

    reason = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidUsage(LedgerError):
    """A usage event that cannot be charged as given (bad counts, bad times, no usage)."""

    reason = "invalid_usage"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class UnpricedModel(LedgerError):
    """The price book has no price for this model: never charged as $0."""

    reason = "unpriced"

    def __init__(self, model: str, provider: str | None, book_version: str) -> None:
        where = f" (provider {provider!r})" if provider else ""
        super().__init__(f"no price for model {model!r}{where} in price book {book_version[:19]}")
        self.model = model
        self.provider = provider
        self.book_version = book_version


class InvalidPriceBook(LedgerError):
    """A price book whose content is inconsistent (bad rates, wrong version hash)."""

    reason = "invalid_price_book"


class InvalidBudget(LedgerError):
    """A budget command or duration that cannot be applied."""

    reason = "invalid_budget"
