"""The backends' one exception type."""

from linewatch import errors


class BackendError(errors.BackendError, ValueError):
    """A backend cannot run this model here (not installed, wrong device, unreadable export)."""
