"""Support-ticket triage: the reference workflow on Banking77's real bank messages."""

from tether.workflows.triage.flow import Ticket, workflow

__all__ = ["Ticket", "workflow"]
