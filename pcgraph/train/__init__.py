from .check import CheckReport, check_against_bp
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import OPTIMIZERS, make_optimizer
from .trainer import Experiment, Trainer

__all__ = ["CheckReport", "Experiment", "OPTIMIZERS", "Trainer", "check_against_bp", "load_checkpoint",
           "make_optimizer", "save_checkpoint"]
