"""NLS training: the trainer with in-place distillation and exact resume (`trainer`), subnet
samplers (`sampling`), training targets (`targets`) and importance reordering (`reorder`)."""

from .reorder import reorder_network
from .sampling import make_sampler
from .trainer import NLSTrainer, TrainArgs, TrainResult

__all__ = ["NLSTrainer", "TrainArgs", "TrainResult", "make_sampler", "reorder_network"]
