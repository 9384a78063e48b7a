"""The backends' one exception type."""


class BackendError(ValueError):
    """A backend cannot run this model here (not installed, wrong device, unreadable export)."""
