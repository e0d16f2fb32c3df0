"""Split models: a registry of networks cut into a trust-zone head and a server-side tail.

``veil.models.build(name, split)`` gives a :class:`SplitModel` (random weights); its
:class:`ModelConfig` says where the weights come from, how images become inputs, where the model
can be split and how its outputs are compared. FaceBoxes (:mod:`veil.models.faceboxes`) ships;
register more with :func:`register_model`.
"""

from veil.models.registry import (
    Distortion,
    InputSpec,
    ModelConfig,
    Outputs,
    SplitModel,
    SplitNetwork,
    SplitSpec,
    UnknownModelError,
    WeightsSpec,
    build,
    get_config,
    list_models,
    register_model,
)

__all__ = [
    "Distortion",
    "InputSpec",
    "ModelConfig",
    "Outputs",
    "SplitModel",
    "SplitNetwork",
    "SplitSpec",
    "UnknownModelError",
    "WeightsSpec",
    "build",
    "get_config",
    "list_models",
    "register_model",
]

# The models veil ships register themselves on import (after the registry above is complete).
from veil.models import builtin as _builtin  # noqa: F401
