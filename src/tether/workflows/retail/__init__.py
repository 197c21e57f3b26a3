"""Retail order support on τ²-bench's retail domain: a planner plans, the executor runs the plan through the gate."""

from tether.workflows.retail.flow import Conversation, workflow

__all__ = ["Conversation", "workflow"]
