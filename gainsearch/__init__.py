"""gainsearch: tune CNN classifiers without hold-out validation data.

Every trial trains on the full training set; after each epoch the network's Maximum Gain (the
peak of its spectral response to an impulse image, Stamatescu & McDonnell, arXiv:1810.03241) is
measured. The trial score (the training loss, :func:`trial_score`) is the objective and the
pruning signal where validation loss normally goes; the gain curve gives the diagnosis, and the
training predictions the stopping signals and the label-noise estimate. :func:`load_best`
returns a search's tuned model.

The package: ``core`` (the measurement, features, scores, diagnosis, decision and the one
per-epoch :func:`evaluate`), ``batteries`` (data, models, trainer), ``integrations`` (the Optuna,
Ray Tune and Lightning adapters), ``search`` (specs, the study, results and the runners), then
``report`` and ``cli``. This module imports neither optuna nor ray. The measurement's
internal steps (``data_derivative``, ``hann_window_2d``, ``amplitude_spectrum_db``,
``impulse_probe``) are importable from :mod:`gainsearch.core.spectral`.
"""

from gainsearch.batteries.data import DATASETS, DataError, TensorData, load_dataset
from gainsearch.batteries.models import create_model, list_models, register_model
from gainsearch.batteries.train import (
    EpochContext,
    TrainConfig,
    TrialResult,
    load_checkpoint,
    model_from_checkpoint,
    read_history,
    train_trial,
)
from gainsearch.core.decision import Decision, DecisionConfig, decide
from gainsearch.core.evaluation import Evaluation, evaluate
from gainsearch.core.features import (
    LABELS,
    CurveFeatures,
    Diagnosis,
    DiagnosisConfig,
    compute_features,
    diagnose,
)
from gainsearch.core.monitor import GainMonitor, GainReading
from gainsearch.core.objective import ScoreConfig, TrialScoreConfig, trial_score
from gainsearch.core.spectral import GainResult, maximum_gain
from gainsearch.search.models import TunedModel, load_best

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "LABELS",
    "CurveFeatures",
    "DataError",
    "Decision",
    "DecisionConfig",
    "Diagnosis",
    "DiagnosisConfig",
    "EpochContext",
    "Evaluation",
    "GainMonitor",
    "GainReading",
    "GainResult",
    "ScoreConfig",
    "TensorData",
    "TrainConfig",
    "TrialResult",
    "TrialScoreConfig",
    "TunedModel",
    "__version__",
    "compute_features",
    "create_model",
    "decide",
    "diagnose",
    "evaluate",
    "list_models",
    "load_best",
    "load_checkpoint",
    "load_dataset",
    "maximum_gain",
    "model_from_checkpoint",
    "read_history",
    "register_model",
    "train_trial",
    "trial_score",
]
