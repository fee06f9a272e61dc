"""What both daemons need at run time that is not wire format: settings layering
(``settings``), logging (``logs``) and the clock (``clock``). Imports only the standard
library, pydantic and the wire contract (``schemas``, for the topic prefix rules)."""

from __future__ import annotations

__all__: list[str] = []
