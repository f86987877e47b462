"""The event catalog (placeholder until the catalog branch lands)."""

from .publish import PublishError, parse_publish_body

__all__ = ["PublishError", "parse_publish_body"]
