"""Op families, activations and losses, each registered by name."""

from .activations import ACTIVATIONS, Activation, get_activation
from .base import OPS, Op, get_op
from . import attention, conv, elementwise, identity, linear, local, norm, pool, sequence  # noqa: F401  (registration)
from . import dropout, graph_conv  # noqa: F401  (registration: per-step dropout, torch-geometric layers)
from .losses import LOSSES, Loss, Objective, get_loss

__all__ = ["ACTIVATIONS", "Activation", "get_activation", "OPS", "Op", "get_op",
           "LOSSES", "Loss", "Objective", "get_loss"]
