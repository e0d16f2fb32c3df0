"""The models veil ships: importing this module registers them (see :mod:`veil.models.registry`)."""

from veil.models import faceboxes  # noqa: F401 - registers "faceboxes"
