"""Registry of technique handlers: one function per config type.

``apply_recipe`` looks each step's handler up here by the config's class, so adding a
technique means one config class, one handler and one ``register_handler`` call.

Handlers of torch-stage configs have the signature
``handler(config, module, context) -> module`` and return a new module, leaving the
input untouched. Handlers of ONNX-stage configs have the signature
``handler(config, source, destination, context) -> destination`` and write a new file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgefleet.compress.configs import TechniqueConfig
from edgefleet.compress.dataset import Dataset
from edgefleet.compress.errors import ConfigError

__all__ = ["TechniqueContext", "handler_for", "register_handler"]


@dataclasses.dataclass(frozen=True)
class TechniqueContext:
    """Inputs a handler may use besides its config and its input model.

    ``details`` collects figures a handler measured, for example MACs before and after
    pruning. They are stored with the cached artifact and shown in reports. ``teacher``
    is the torch model the recipe started from (``apply_recipe`` sets it for torch-stage
    steps), the model that a ``DistillationConfig`` step distils from.
    """

    dataset: Dataset
    work_dir: Path
    progress: Callable[[str], None]
    parent_accuracy: float | None = None
    # A torch.nn.Module; typed Any because this module does not import torch.
    teacher: Any = None
    details: dict[str, float] = dataclasses.field(default_factory=dict)


HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
_HANDLERS: dict[type[TechniqueConfig], Callable[..., Any]] = {}


def register_handler(config_type: type[TechniqueConfig]) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated function as the handler of ``config_type``."""

    def decorate(handler: HandlerT) -> HandlerT:
        existing = _HANDLERS.get(config_type)
        if existing is not None and existing is not handler:
            raise TypeError(
                f"{config_type.__name__} already has the handler {existing.__qualname__}"
            )
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def handler_for(config: TechniqueConfig) -> Callable[..., Any]:
    """Return the handler registered for ``type(config)``; raises ``ConfigError`` if none."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(
            f"no handler is registered for {type(config).__name__}; import the module that "
            "implements it before applying the recipe"
        )
    return handler
