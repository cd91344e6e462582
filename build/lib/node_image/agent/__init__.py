"""The device agent: registration, and (next) the reconcile loop."""

__version__ = "0.1.0"
