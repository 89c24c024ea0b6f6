"""Training and evaluation on the recall tasks.

``train(model, task, TrainConfig(steps=..., batch_size=..., lr=...))``: AdamW, linear warm-up then cosine
decay, gradient clipping, loss and accuracy counted only at answer positions (labels != -100), a progress bar
(``tqdm.auto``: a widget in notebooks, text in a terminal), seeds for data and initialisation, and an
optional wall-clock budget. ``evaluate`` measures accuracy on fresh examples. ``sweep`` runs a grid and
returns tidy records (one dict per run) that ``save_records`` writes as JSON or CSV.

Modules: ``loop`` (train, evaluate, the optimiser and schedule), ``records`` (sweep, save_records).
"""

from .loop import TrainConfig, TrainResult, answer_accuracy, default_device, evaluate, lr_at, make_optimizer, train
from .records import save_records, sweep

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "sweep", "save_records", "default_device", "answer_accuracy",
           "make_optimizer", "lr_at"]
