"""Placeholder: being implemented (see issue 2)."""
