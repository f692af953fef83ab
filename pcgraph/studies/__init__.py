"""Studies built on the trainer: the seeds' ablations of Z-IL's conditions."""

from .ablation import AblationConfig, run_ablation

__all__ = ["AblationConfig", "run_ablation"]
