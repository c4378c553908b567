"""Functional ops: custom-op registration, autograd and backend dispatch (layer 2 of 3)."""

from .route import route
from .squash import squash
from .tokenize import tokenize

__all__ = ["route", "squash", "tokenize"]
