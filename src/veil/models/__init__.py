"""Split models: a registry of networks cut into a trust-zone head and a server-side tail.

``veil.models.create(name, split, pretrained=True)`` gives a :class:`SplitModel` with its weights
resolved and SHA-256 verified (:mod:`veil.models.pretrained`); ``build`` the same with random weights. Its
:class:`ModelConfig` says where the weights come from, how images become inputs, where the model
can be split and how its outputs are compared. FaceBoxes (:mod:`veil.models.faceboxes`) ships;
register more with :func:`register_model`.
"""

from veil.models.faceboxes import as_split_model
from veil.models.pretrained import DEFAULT_MODEL, WeightsError, create
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
    "DEFAULT_MODEL",
    "Distortion",
    "InputSpec",
    "ModelConfig",
    "Outputs",
    "SplitModel",
    "SplitNetwork",
    "SplitSpec",
    "UnknownModelError",
    "WeightsError",
    "WeightsSpec",
    "as_split_model",
    "build",
    "create",
    "get_config",
    "list_models",
    "register_model",
]

# The models veil ships register themselves on import (after the registry above is complete).
from veil.models import builtin as _builtin  # noqa: F401
