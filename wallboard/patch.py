"""RFC 7386 JSON Merge Patch: make one (diff), apply one, and compose two. Pure functions."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def diff(old: Any, new: Any) -> Any:
    """The merge patch that turns dict `old` into dict `new`; {} means no change."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before is _MISSING:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(before, dict):
            sub = diff(before, value)
            if sub:
                patch[key] = sub
        elif before != value or type(before) is not type(value):
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def apply(target: Any, patch: Any) -> Any:
    """Apply a merge patch; returns the patched document (`target` is not modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


def compose(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One patch with the effect of applying `first` then `second` (used to merge a slow client's backlog)."""
    result = dict(first)
    for key, value in second.items():
        prior = result.get(key)
        if isinstance(value, dict) and isinstance(prior, dict):
            result[key] = compose(prior, value)
        else:
            result[key] = value
    return result


def without_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as a merge patch leaves it: null members omitted, at every depth (absent means null).

    Snapshots are built with this, so that applying every delta to the first snapshot gives exactly a fresh
    snapshot: a patch can only delete a member, never store a null.
    """
    return {k: without_nulls(v) if type(v) is dict else v for k, v in doc.items() if v is not None}
