"""Fine-tuning estimators: the FMCIB encoder trained end to end with a head.

:class:`FMCIBClassifier` puts a classification head on the encoder (the paper's
4096 -> 2048 -> n_classes MLP, or a linear layer) and trains both with
cross-entropy; :class:`FMCIBSurvivalAnalysis` puts a risk head on it and trains
with the Cox partial likelihood (:func:`cox_ph_loss`). Both start from the
official weights, any checkpoint, or a random initialisation, read lesion
tables or patch arrays through :func:`skfmcib.patches.as_patches`, and share one
training loop (augmentation, warmup and cosine schedule, early stopping on a
validation split, freezing, mixed precision, resumable checkpoints).
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted
from sksurv.base import SurvivalAnalysisMixin
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_censored
from sksurv.util import check_array_survival, check_y_survival

from . import _training, runtime
from ._text import counted
from .patches import as_patches
from .weights import _check_plain, _first_line, load_encoder, read_checkpoint, save_checkpoint

__all__ = ["FMCIBClassifier", "FMCIBSurvivalAnalysis", "cox_ph_loss"]


def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events.

    .. math::

        L = -\\frac{1}{n_e} \\sum_{i: \\delta_i = 1} \\Big( r_i - \\log
            \\sum_{j: t_j \\ge t_i} e^{r_j} \\Big)

    Parameters
    ----------
    risk : Tensor of shape (n,) or (n, 1)
        Predicted log-risks (higher = earlier event).
    time : Tensor of shape (n,)
        Time of the event or of censoring.
    event : Tensor of shape (n,)
        Whether the event was observed (bool or 0/1).

    Returns
    -------
    Tensor
        A scalar; 0 (still connected to ``risk``) when no event is observed.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.finetune import cox_ph_loss
    >>> risk = torch.tensor([0.0, 0.0])
    >>> float(cox_ph_loss(risk, torch.tensor([1.0, 2.0]), torch.tensor([True, False])))
    0.6931471824645996
    """
    risk = risk.reshape(-1)
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1).to(torch.bool)
    if not (len(risk) == len(time) == len(event)):
        raise ValueError(
            f"risk, time and event differ in length: {len(risk)}, {len(time)}, {len(event)}"
        )
    n_events = event.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    order = torch.argsort(time, stable=True)
    r, t, e = risk[order], time[order].contiguous(), event[order]
    # log sum_{j >= k} exp(r_j) for every position k of the time-sorted risks ...
    tail = torch.logcumsumexp(r.flip(0), dim=0).flip(0)
    # ... taken at the first of tied times: the risk set of t_i is {j: t_j >= t_i}.
    first = torch.searchsorted(t, t, side="left")
    return -(r - tail[first])[e].sum() / n_events


_SHARED_PARAMETERS = """\
    weights : "fmcib", str, path-like or None, default="fmcib"
        Starting point of the encoder: ``"fmcib"`` (the official weights, downloaded
        once into the cache), a checkpoint file in any layout
        :func:`skfmcib.weights.read_checkpoint` reads (a pretraining or ``save``
        output, say), or None for a random initialisation seeded by
        ``random_state``.
    arch : None, str or dict, default=None
        Encoder architecture: None takes it from the checkpoint (else the FMCIB
        ResNet-50); a name (``"resnet10"``, ..., ``"resnet50"``) or a dict of
        :class:`~skfmcib.encoder.EncoderConfig` fields overrides it.
    head : {{"mlp", "linear"}}, default="{head}"
        ``"mlp"``: features -> features/2 -> outputs with ReLU (4096 -> 2048 -> ...
        for FMCIB, the paper's fine-tuning head); ``"linear"``: one linear layer.
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=8
        Patches per optimisation step (and per inference batch).
    lr : float, default=1e-4
        Peak learning rate.
    weight_decay : float, default=1e-2
        Weight decay of convolution and linear weights (biases and batch-norm
        parameters are not decayed).
    optimizer : {{"adamw", "sgd"}}, default="adamw"
        AdamW, or SGD with Nesterov momentum 0.9.
    lr_schedule : {{"cosine", "constant"}}, default="cosine"
        After warmup: cosine decay towards 0 (reached at the end of the last step),
        or constant.
    warmup_epochs : float, default=0
        Linear learning-rate warmup, in epochs (fractions allowed).
    augment : bool, default=True
        Augment training batches with random flips, intensity and histogram
        shifts and Gaussian smoothing (:func:`skfmcib.augment.finetune_augment`).
    validation_fraction : float or None, default=None
        Hold out this fraction of the training data (stratified where possible)
        to compute a validation loss after every epoch; the weights of the epoch
        with the lowest validation loss are restored at the end.
    n_iter_no_change : int or None, default=None
        Stop when the monitored loss (validation loss, else training loss) has not
        improved for this many epochs.
    freeze : "none", "encoder" or int, default="none"
        Encoder parts kept fixed (weights and batch-norm statistics): nothing, the
        whole encoder (only the head learns), or the stem and the first ``k``
        stages (``k`` from 1 to 4; 0 freezes nothing, as ``"none"``).
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision : {{"fp32", "bf16", "fp16"}}, default="fp32"
        Autocast precision of the forward passes (fp16 uses gradient scaling).
    coordinate_system : {{"LPS", "RAS"}}, default="LPS"
        Convention of lesion-table coordinates.
    checkpoint_dir : str, path-like or None, default=None
        When set, the full training state (weights, optimizer, schedule, random
        generator, history) is written there atomically after every epoch, in a
        file named after the run (parameters and data), and a later ``fit`` with
        the same parameters and data continues from it (see ``resume``). Runs with
        other parameters or data (grid-search candidates, CV folds) use other files.
    resume : bool, default=True
        Continue from a matching state in ``checkpoint_dir`` when there is one;
        False starts over (and overwrites it).
    cache_dir : str, path-like or None, default=None
        Where the official weights are cached
        (:func:`skfmcib.weights.default_cache_dir` when None).
    random_state : int, RandomState instance or None, default=None
        Seeds the head's (and a random encoder's) initialisation, the validation
        split, shuffling and augmentation. With an int, ``device="cpu"`` and
        ``precision="fp32"``, training is reproducible exactly (not in bf16 on the CPU:
        torch's bfloat16 convolution gradients vary from run to run).
    verbose : int, default=0
        Print one line per epoch (losses, learning rate, time) when > 0."""


# Parameters save() does not store: set by load() from the file, or tied to a machine.
_NOT_SAVED = frozenset({"weights", "head", "arch", "device", "cache_dir", "checkpoint_dir"})


def _plain(value) -> bool:
    """Whether a parameter value can be stored in a weights-only checkpoint."""
    try:
        _check_plain(value, "")
    except TypeError:
        return False
    return True


def _fill_doc(cls):
    cls.__doc__ = cls.__doc__.replace("    {shared}", _SHARED_PARAMETERS.format(head=cls._head))
    return cls


class _FineTuner(BaseEstimator):
    """Shared parameter checks, training and persistence of the fine-tuning estimators."""

    _head = "mlp"
    _kind = ""

    # ---------------------------------------------------------------- parameters

    def _check_params(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_int("max_epochs")
        positive_int("batch_size")
        if not isinstance(self.lr, Real) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.weight_decay, Real) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not isinstance(self.warmup_epochs, Real) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.validation_fraction is not None and not (
            isinstance(self.validation_fraction, Real) and 0 < self.validation_fraction < 1
        ):
            raise ValueError(
                "validation_fraction must be None or a number in (0, 1), got "
                f"{self.validation_fraction!r}"
            )
        if self.n_iter_no_change is not None:
            positive_int("n_iter_no_change")
        _training.check_freeze(self.freeze)
        _training.head_spec(self.head, 1, 1)
        runtime.check_precision(self.precision)
        if self.coordinate_system not in ("LPS", "RAS"):
            raise ValueError(
                f"coordinate_system must be 'LPS' or 'RAS', got {self.coordinate_system!r}"
            )

    # ------------------------------------------------------------------ subclass API

    def _prepare_targets(
        self, X: np.ndarray, y
    ) -> tuple[torch.Tensor, np.ndarray | None, int, dict[str, Any]]:
        """Return (targets for the loss, labels to stratify by, number of outputs, fitted
        attributes to set once training succeeds)."""
        raise NotImplementedError

    def _loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """Fitted attributes besides the network that ``save`` stores."""
        return {}

    def _restore_extra_state(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    def _after_fit(self, patches: np.ndarray, target: torch.Tensor) -> None:
        """Hook run once the network is trained."""

    def _check_validation(self, target: torch.Tensor, n: int) -> None:
        """Refuse a validation part whose loss could not choose an epoch."""

    # --------------------------------------------------------------------- fitting

    def _fingerprint(
        self, patches: np.ndarray, target: torch.Tensor, weights_digest: str, seeds: tuple
    ):
        params = self.get_params(deep=False)
        for name in ("verbose", "checkpoint_dir", "resume", "device", "cache_dir"):
            params.pop(name, None)
        rs = params.pop("random_state")
        if isinstance(rs, Integral) or rs is None:
            params["random_state"] = rs
        else:  # a generator: the seeds it gave (a new RandomState(1) gives the same)
            params["random_state"] = (type(rs).__name__, *seeds)
        if params.get("weights") is not None:
            params["weights"] = "checkpoint"  # identified by its digest below
        return _training.digest(
            type(self).__name__, params, weights_digest, patches, target.numpy()
        )

    def _split(self, n: int, stratify: np.ndarray | None, seed: int):
        index = np.arange(n)
        if self.validation_fraction is None:
            return index, index[:0]
        n_valid = int(np.ceil(self.validation_fraction * n))
        if n_valid < 1 or n - n_valid < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no training or no "
                f"validation sample out of {n}"
            )
        if stratify is not None:
            _, counts = np.unique(stratify, return_counts=True)
            if counts.min() < 2 or n_valid < len(counts) or n - n_valid < len(counts):
                stratify = None
        train, valid = train_test_split(
            index, test_size=n_valid, random_state=seed, stratify=stratify
        )
        return np.sort(train), np.sort(valid)

    def fit(self, X: pd.DataFrame | ArrayLike, y: ArrayLike) -> _FineTuner:
        """Fine-tune the encoder and the head on lesions.

        Parameters
        ----------
        X : DataFrame or array-like
            A lesion table (``image_path``, ``coordX``, ``coordY``, ``coordZ``) or
            pre-cropped patches ``(n, 50, 50, 50)``, ``(n, 1, 50, 50, 50)`` or
            ``(n, 125000)``.
        y : array-like
            The targets (see the class description).

        Returns
        -------
        self
            The fitted estimator.
        """
        self._check_params()
        patches = as_patches(X, coordinate_system=self.coordinate_system)
        # Fitted attributes are set together after training: a refit that fails leaves
        # the fitted estimator as it was, not new classes beside the old head.
        target, stratify, n_out, fitted = self._prepare_targets(patches, y)
        device = runtime.resolve_device(self.device)
        init_seed, split_seed, train_seed = (
            int(s) for s in check_random_state(self.random_state).randint(0, 2**31 - 1, size=3)
        )
        encoder, info = load_encoder(
            self.weights,
            config=_training.arch_config(self.arch),
            cache_dir=self.cache_dir,
            random_state=init_seed if self.weights is None else None,
        )
        if self.weights is not None:  # a file's tensors: frozen ones must not follow it
            _training.own_copy(encoder)
        spec = _training.head_spec(self.head, encoder.out_features, n_out)
        network = _training.EncoderWithHead(encoder, _training.build_head(spec, init_seed))
        frozen = _training.freeze_stages(encoder, _training.check_freeze(self.freeze))
        train_index, valid_index = self._split(len(patches), stratify, split_seed)
        if len(valid_index):
            self._check_validation(target[valid_index], len(patches))
        state_path = None
        fingerprint = self._fingerprint(
            patches, target, info.digest, (init_seed, split_seed, train_seed)
        )
        if self.checkpoint_dir is not None:
            name = f"{type(self).__name__}-{fingerprint[:16]}.pt"
            state_path = Path(self.checkpoint_dir).expanduser() / name
        config = _training.TrainConfig(
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            optimizer=self.optimizer,
            lr_schedule=self.lr_schedule,
            warmup_epochs=float(self.warmup_epochs),
            augment=bool(self.augment),
            n_iter_no_change=self.n_iter_no_change,
            precision=self.precision,
            verbose=int(self.verbose),
        )
        result = _training.train_network(
            network,
            frozen,
            patches,
            target,
            self._loss,
            config,
            device=device,
            seed=train_seed,
            train_index=train_index,
            valid_index=valid_index,
            state_path=state_path,
            resume=bool(self.resume),
            fingerprint=fingerprint,
        )
        for p in network.parameters():
            p.requires_grad_(False)
        for name, value in fitted.items():
            setattr(self, name, value)
        self.encoder_ = network.encoder.eval()
        self.head_ = network.head.eval()
        self.head_spec_ = spec
        self.weights_info_ = info
        self.history_ = result.history
        self.n_iter_ = len(result.history)
        self.best_epoch_ = result.best_epoch
        self.checkpoint_path_ = state_path
        self._after_fit(patches[result.train_index], target[result.train_index])
        return self

    # ------------------------------------------------------------------ inference

    def _network(self) -> tuple[torch.nn.Module, torch.device]:
        check_is_fitted(self, "head_")
        device = runtime.resolve_device(self.device)
        network = _training.EncoderWithHead(self.encoder_, self.head_).to(device).eval()
        return network, device

    def _outputs(self, X) -> torch.Tensor:
        network, device = self._network()
        patches = as_patches(X, coordinate_system=self.coordinate_system)
        return _training.predict_outputs(
            network, patches, int(self.batch_size), device, self.precision
        )

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fine-tuned encoder and head to a checkpoint file.

        The file is a regular skfmcib checkpoint (``trunk_state_dict`` +
        ``encoder_config``, :func:`skfmcib.weights.save_checkpoint`), so
        ``FMCIBTransformer(weights=path)`` extracts features with the fine-tuned
        encoder and ``weights=path`` starts another fine-tuning from it; the head
        and the fitted attributes travel in ``head_state_dict``, ``head_spec`` and
        ``estimator`` entries for :meth:`load`.

        Parameters
        ----------
        path : str or path-like
            Destination (``.pt``, ``.torch``, ...; written atomically). The head
            cannot be stored in ``.safetensors`` metadata: save ``encoder_`` alone
            with :func:`~skfmcib.weights.save_checkpoint` for that.

        Returns
        -------
        pathlib.Path
            The file written.

        Examples
        --------
        A tiny classifier with random initial weights, saved and loaded again
        (:class:`FMCIBSurvivalAnalysis` is saved the same way):

        >>> import os, tempfile
        >>> import numpy as np
        >>> from skfmcib.finetune import FMCIBClassifier
        >>> X = np.random.default_rng(0).random((4, 1, 50, 50, 50), dtype=np.float32)
        >>> clf = FMCIBClassifier(weights=None, arch={"arch": "resnet10", "widen_factor": 0.125},
        ...                       max_epochs=1, batch_size=4, device="cpu",
        ...                       random_state=0).fit(X, [0, 1, 0, 1])
        >>> path = clf.save(os.path.join(tempfile.mkdtemp(), "classifier.pt"))
        >>> path.name
        'classifier.pt'
        >>> same = FMCIBClassifier.load(path, device="cpu")
        >>> np.allclose(same.predict_proba(X), clf.predict_proba(X))
        True
        """
        check_is_fitted(self, "head_")
        if Path(path).suffix == ".safetensors":
            raise ValueError(
                "save() stores the head as tensors, which safetensors metadata cannot hold; "
                "use a .pt or .torch path, or skfmcib.weights.save_checkpoint(est.encoder_, "
                "path) for the encoder alone"
            )
        params = {
            name: value
            for name, value in self.get_params(deep=False).items()
            if name not in _NOT_SAVED and _plain(value)
        }
        extra = {
            "estimator": type(self).__name__,
            "params": params,
            "head_spec": dict(self.head_spec_),
            "head_state_dict": _training.cpu_state_dict(self.head_),
            "history": list(self.history_),
            "best_epoch": self.best_epoch_,
            **self._extra_state(),
        }
        return save_checkpoint(self.encoder_, path, extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, **params: Any) -> _FineTuner:
        """Rebuild a fitted estimator from a file written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            The checkpoint.
        **params
            Parameters that replace the saved ones (``device``, ``batch_size``,
            ``precision``, ...). The estimator gets the parameters it was saved with
            (``coordinate_system``, ``precision``, the training settings, ...),
            except those tied to the machine it ran on: ``device``, ``cache_dir`` and
            ``checkpoint_dir`` are the defaults unless given here. ``weights`` is
            set to ``path``, ``head`` to the saved head's kind and ``arch`` to None
            (the file holds the architecture).

        Returns
        -------
        estimator
            Fitted: predictions equal those of the saved estimator.

        Examples
        --------
        A tiny survival model with random initial weights, saved and loaded again
        (:class:`FMCIBClassifier` is loaded the same way):

        >>> import os, tempfile
        >>> import numpy as np
        >>> from sksurv.util import Surv
        >>> from skfmcib.finetune import FMCIBSurvivalAnalysis
        >>> X = np.random.default_rng(0).random((4, 1, 50, 50, 50), dtype=np.float32)
        >>> y = Surv.from_arrays(event=[1, 0, 1, 1], time=[5.0, 8.0, 2.0, 9.0])
        >>> est = FMCIBSurvivalAnalysis(weights=None, arch={"arch": "resnet10",
        ...                             "widen_factor": 0.125}, max_epochs=1, batch_size=4,
        ...                             device="cpu", random_state=0).fit(X, y)
        >>> path = est.save(os.path.join(tempfile.mkdtemp(), "survival.pt"))
        >>> same = FMCIBSurvivalAnalysis.load(path, device="cpu")
        >>> np.allclose(same.predict(X), est.predict(X)), same.max_epochs
        (True, 1)
        """
        checkpoint = read_checkpoint(path)
        extra = checkpoint.extra
        if extra.get("estimator") != cls.__name__ or "head_state_dict" not in extra:
            found = extra.get("estimator", "no fine-tuned estimator")
            raise ValueError(
                f"{path} holds {found}, not a saved {cls.__name__}; use "
                f"{cls.__name__}(weights=path) to fine-tune from its encoder"
            )
        fixed = sorted({"weights", "head"} & set(params))
        if fixed:
            raise TypeError(
                f"{cls.__name__}.load sets {' and '.join(fixed)} from the file; pass the "
                "other parameters only"
            )
        saved = {k: v for k, v in dict(extra.get("params", {})).items() if k not in _NOT_SAVED}
        unknown = sorted(set(saved) - set(cls._get_param_names()))
        if unknown:
            raise ValueError(
                f"{path}: saved with parameters this {cls.__name__} does not have "
                f"({', '.join(unknown)}): written by another version of skfmcib?"
            )
        try:  # what the file holds; the caller's own parameters are checked after
            spec = dict(extra["head_spec"])
            est = cls(weights=str(path), head=spec["kind"], **saved)
            est._check_params()
            head = _training.build_head(spec, seed=0)
            head.load_state_dict(extra["head_state_dict"])
            est._restore_extra_state(extra)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            what = f"no {exc} entry" if isinstance(exc, KeyError) else _first_line(exc)
            raise ValueError(f"{path}: not a usable saved {cls.__name__} ({what})") from exc
        est.set_params(**params)
        est._check_params()
        encoder, info = load_encoder(checkpoint.path)
        _training.own_copy(encoder)  # not the file on disk: it may be rewritten
        for p in (*encoder.parameters(), *head.parameters()):
            p.requires_grad_(False)
        est.encoder_, est.head_ = encoder.eval(), head.eval()
        est.head_spec_ = spec
        est.weights_info_ = info
        est.history_ = list(extra.get("history", []))
        est.n_iter_ = len(est.history_)
        est.best_epoch_ = extra.get("best_epoch")
        est.checkpoint_path_ = None
        return est

    def __getstate__(self):
        state = super().__getstate__()
        for name in ("encoder_", "head_"):
            if name in state:
                state[name] = _training.clone_to_cpu(state[name])
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True  # exact only on the CPU with an int random_state
        return tags


@_fill_doc
class FMCIBClassifier(ClassifierMixin, _FineTuner):
    """Fine-tune the FMCIB encoder with a classification head.

    The encoder (official weights, a checkpoint, or random) and a head are
    trained together with cross-entropy on 50 mm lesion patches, as in the
    paper's fine-tuning experiments (4096 -> 2048 -> n_classes head).

    Parameters
    ----------
    {shared}
    class_weight : None or "balanced", default=None
        Weights of the classes in the loss; "balanced" weights each class
        inversely to its frequency in ``y`` (the validation part of
        ``validation_fraction`` is split off stratified, so its frequencies are
        the same): each lesion's loss is multiplied by its class's weight, then
        averaged over the batch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    encoder_ : ResNet3D
        The fine-tuned encoder (eval mode).
    head_ : torch.nn.Module
        The fitted head.
    head_spec_ : dict
        The head's kind and sizes.
    weights_info_ : skfmcib.weights.WeightsInfo
        Where the starting weights came from.
    history_ : list of dict
        One entry per epoch: ``epoch``, ``train_loss``, ``valid_loss`` (with
        ``validation_fraction``), ``lr`` (at the epoch's last step), ``time``.
    n_iter_ : int
        Epochs trained.
    best_epoch_ : int or None
        Epoch of the lowest monitored loss (restored with ``validation_fraction``).
    checkpoint_path_ : pathlib.Path or None
        The training-state file in ``checkpoint_dir``.

    See Also
    --------
    FMCIBSurvivalAnalysis : The same for time-to-event targets.
    skfmcib.FMCIBTransformer : Frozen features for a linear probe.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.finetune import FMCIBClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((8, 1, 50, 50, 50), dtype=np.float32) * 0.1
    >>> X[4:] += 0.5  # bright lesions
    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> clf = FMCIBClassifier(weights=None, arch={"arch": "resnet10", "widen_factor": 0.125},
    ...                       max_epochs=3, batch_size=4, lr=1e-3, device="cpu",
    ...                       random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape, len(clf.history_)
    ((8, 2), 3)
    """

    _head = "mlp"

    def __init__(
        self,
        weights="fmcib",
        arch=None,
        head="mlp",
        max_epochs=10,
        batch_size=8,
        lr=1e-4,
        weight_decay=1e-2,
        optimizer="adamw",
        lr_schedule="cosine",
        warmup_epochs=0,
        augment=True,
        validation_fraction=None,
        n_iter_no_change=None,
        freeze="none",
        device="auto",
        precision="fp32",
        coordinate_system="LPS",
        checkpoint_dir=None,
        resume=True,
        cache_dir=None,
        random_state=None,
        verbose=0,
        class_weight=None,
    ):
        self.weights = weights
        self.arch = arch
        self.head = head
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.augment = augment
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.freeze = freeze
        self.device = device
        self.precision = precision
        self.coordinate_system = coordinate_system
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose
        self.class_weight = class_weight

    def _prepare_targets(self, X, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        check_consistent_length(X, y)
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-dimensional, got shape {y.shape}")
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"This solver needs samples of at least 2 classes in the data, but the data "
                f"contains only one class: {classes[:1].tolist()[0]!r}"
            )
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        self._class_weights = None  # the loss's, while training
        if self.class_weight == "balanced":
            weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=encoded)
            self._class_weights = torch.as_tensor(weights, dtype=torch.float32)
        target = torch.as_tensor(encoded, dtype=torch.long)
        return target, encoded, len(classes), {"classes_": classes}

    def _loss(self, outputs, target):
        if self._class_weights is None:
            return F.cross_entropy(outputs, target)
        # Each lesion's loss times its class's weight, averaged over the batch's lesions
        # (cross_entropy(weight=...) would divide by the batch's total weight instead, so
        # that a batch of one class, one lesion for instance, would not be weighted).
        weight = self._class_weights.to(outputs.device)[target]
        return (weight * F.cross_entropy(outputs, target, reduction="none")).mean()

    def _extra_state(self):
        return {"classes": self.classes_.tolist()}

    def _restore_extra_state(self, extra):
        self.classes_ = np.asarray(extra["classes"])

    def predict_proba(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches, as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_lesions, n_classes)
            Softmax of the head's outputs, columns in the order of ``classes_``.
        """
        logits = self._outputs(X)
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Most probable class of each lesion.

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches, as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_lesions,)
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


@_fill_doc
class FMCIBSurvivalAnalysis(SurvivalAnalysisMixin, _FineTuner):
    """Fine-tune the FMCIB encoder for time-to-event data with a Cox loss.

    The encoder and a risk head (features -> 1) are trained with the negative
    Cox partial log-likelihood (Breslow ties, :func:`cox_ph_loss`) over each
    mini-batch. Predictions are log-risk scores: higher means an earlier
    event. Follows scikit-survival's conventions: ``y`` is a structured array
    (:func:`sksurv.util.Surv.from_arrays`), ``score`` is Harrell's concordance
    index, and survival functions come from Breslow's estimator of the
    baseline hazard on the training data.

    Parameters
    ----------
    {shared}

    Attributes
    ----------
    encoder_ : ResNet3D
        The fine-tuned encoder (eval mode).
    head_ : torch.nn.Module
        The fitted risk head.
    head_spec_ : dict
        The head's kind and sizes.
    weights_info_ : skfmcib.weights.WeightsInfo
        Where the starting weights came from.
    history_ : list of dict
        One entry per epoch: ``epoch``, ``train_loss``, ``valid_loss`` (with
        ``validation_fraction``), ``lr``, ``time``.
    n_iter_ : int
        Epochs trained.
    best_epoch_ : int or None
        Epoch of the lowest monitored loss.
    unique_times_ : ndarray
        Distinct times of the training data, of events and of censoring alike (where
        the survival functions are evaluated).
    checkpoint_path_ : pathlib.Path or None
        The training-state file in ``checkpoint_dir``.

    See Also
    --------
    FMCIBClassifier : The same for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sksurv.util import Surv
    >>> from skfmcib.finetune import FMCIBSurvivalAnalysis
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((8, 1, 50, 50, 50), dtype=np.float32)
    >>> y = Surv.from_arrays(event=[1, 0, 1, 1, 0, 1, 1, 0], time=[5, 8, 2, 9, 4, 3, 7, 6])
    >>> est = FMCIBSurvivalAnalysis(weights=None, arch={"arch": "resnet10",
    ...                             "widen_factor": 0.125}, max_epochs=2, batch_size=4,
    ...                             device="cpu", random_state=0).fit(X, y)
    >>> est.predict(X).shape, 0.0 <= est.score(X, y) <= 1.0
    ((8,), True)
    """

    _head = "linear"

    def __init__(
        self,
        weights="fmcib",
        arch=None,
        head="linear",
        max_epochs=10,
        batch_size=8,
        lr=1e-4,
        weight_decay=1e-2,
        optimizer="adamw",
        lr_schedule="cosine",
        warmup_epochs=0,
        augment=True,
        validation_fraction=None,
        n_iter_no_change=None,
        freeze="none",
        device="auto",
        precision="fp32",
        coordinate_system="LPS",
        checkpoint_dir=None,
        resume=True,
        cache_dir=None,
        random_state=None,
        verbose=0,
    ):
        self.weights = weights
        self.arch = arch
        self.head = head
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.augment = augment
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.freeze = freeze
        self.device = device
        self.precision = precision
        self.coordinate_system = coordinate_system
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose

    def _prepare_targets(self, X, y):
        event, time = check_array_survival(X, y)
        target = torch.as_tensor(np.stack([time, event], axis=1), dtype=torch.float64)
        return target, event.astype(np.int64), 1, {}

    def _loss(self, outputs, target):
        return cox_ph_loss(outputs[:, 0], target[:, 0], target[:, 1])

    def _check_validation(self, target, n):
        events = int(target[:, 1].sum())
        if len(target) < 2 or events == 0:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} holds out "
                f"{counted(len(target), 'lesion')} of {n} with {counted(events, 'event')}: "
                "the Cox partial likelihood needs at least 2 lesions and 1 event, or the "
                "validation loss is 0 at every epoch and cannot choose one. Hold out more "
                "(a larger validation_fraction) or pass validation_fraction=None"
            )

    def _after_fit(self, patches, target):
        risk = self._outputs(patches)[:, 0].double().numpy()
        time, event = target[:, 0].numpy(), target[:, 1].numpy().astype(bool)
        # Breslow's estimator exponentiates the log-risks: centred, they cannot overflow
        # (the survival functions do not change with a shift of every log-risk).
        self._risk_offset = float(np.mean(risk))
        self._baseline_model = BreslowEstimator().fit(risk - self._risk_offset, event, time)

    def _centred_risk(self, X) -> np.ndarray:
        return self.predict(X) - getattr(self, "_risk_offset", 0.0)

    def _extra_state(self):
        base = self._baseline_model
        return {
            "baseline": {
                "unique_times": torch.as_tensor(base.unique_times_),
                "cum_baseline_hazard": torch.as_tensor(base.cum_baseline_hazard_.y),
                "risk_offset": self._risk_offset,
            }
        }

    def _restore_extra_state(self, extra):
        from sksurv.functions import StepFunction

        base = BreslowEstimator()
        times = extra["baseline"]["unique_times"].numpy()
        hazard = extra["baseline"]["cum_baseline_hazard"].numpy()
        base.unique_times_ = times
        base.cum_baseline_hazard_ = StepFunction(times, hazard)
        base.baseline_survival_ = StepFunction(times, np.exp(-hazard))
        self._baseline_model = base
        self._risk_offset = float(extra["baseline"].get("risk_offset", 0.0))

    @property
    def unique_times_(self) -> np.ndarray:
        """Distinct times (events and censoring) of the training data."""
        check_is_fitted(self, "head_")
        return self._baseline_model.unique_times_

    def predict(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Predict log-risk scores (higher = earlier event).

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches, as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_lesions,)
        """
        return self._outputs(X)[:, 0].double().numpy()

    def predict_cumulative_hazard_function(
        self, X: pd.DataFrame | ArrayLike, return_array: bool = False
    ) -> np.ndarray:
        """Cumulative hazard functions, from Breslow's estimator on the training data.

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches.
        return_array : bool, default=False
            Return an array ``(n_lesions, n_unique_times)`` evaluated at
            ``unique_times_`` instead of step functions.

        Returns
        -------
        ndarray
            Step functions (:class:`sksurv.functions.StepFunction`) or values.
        """
        check_is_fitted(self, "head_")
        return self._predict_cumulative_hazard_function(
            self._baseline_model, self._centred_risk(X), return_array
        )

    def predict_survival_function(
        self, X: pd.DataFrame | ArrayLike, return_array: bool = False
    ) -> np.ndarray:
        """Survival functions, from Breslow's estimator on the training data.

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches.
        return_array : bool, default=False
            Return an array ``(n_lesions, n_unique_times)`` evaluated at
            ``unique_times_`` instead of step functions.

        Returns
        -------
        ndarray
            Step functions (:class:`sksurv.functions.StepFunction`) or values.
        """
        check_is_fitted(self, "head_")
        return self._predict_survival_function(
            self._baseline_model, self._centred_risk(X), return_array
        )

    def score(self, X: pd.DataFrame | ArrayLike, y: np.ndarray) -> float:
        """Harrell's concordance index of the predicted risks.

        Parameters
        ----------
        X : DataFrame or array-like
            Lesion table or patches.
        y : structured array
            Event indicator and time (:func:`sksurv.util.Surv.from_arrays`).

        Returns
        -------
        float
            The fraction of comparable pairs ordered correctly by the risk scores.
        """
        event, time = check_y_survival(y)
        risk = self.predict(X)
        check_consistent_length(risk, event)
        return float(concordance_index_censored(event, time, risk)[0])
