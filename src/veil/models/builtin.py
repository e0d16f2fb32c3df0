"""The models veil ships: importing this module registers them (see :mod:`veil.models.registry`)."""

from veil.models import (
    digits,  # noqa: F401 - registers "digits"
    faceboxes,  # noqa: F401 - registers "faceboxes"
)
