"""The one base for avvp's frozen configuration dataclasses (models, training, LLP-Synth)."""

from __future__ import annotations

import dataclasses
from typing import Any

from avvp.errors import AvvpError


class ConfigMixin:
    """`from_dict` (rejecting unknown keys) and `to_dict` for a frozen config dataclass."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build a config from a dict (e.g. a checkpoint's or a run's JSON); unknown keys are an error."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise AvvpError(f"unknown {cls.__name__} key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)
