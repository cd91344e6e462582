"""The device side's one base exception."""


class AgentError(Exception):
    """Anything the agent cannot do; the message says what and why."""
