"""Great Expectations suites for every store kind, and the `validate` stage.

`validate_store(kind, path, params)` is the entry point; `pipeline.validation.stage`
wraps it as the `etude validate` command.
"""

from __future__ import annotations

from pipeline.validation.suites import (
    ValidateParams,
    ValidationError,
    store_kinds,
    validate_store,
)

__all__ = ["store_kinds", "ValidateParams", "ValidationError", "validate_store"]
