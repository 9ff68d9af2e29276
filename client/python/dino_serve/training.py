"""Fine-tuning helpers: building dino.v1.FineTuneConfig and SampleBatch messages from NumPy
arrays, slicing data sets into upload-sized batches, reading the dino / hIPPYflow data layout
and turning JobStatus messages into dicts. The RPCs themselves are methods of
:class:`dino_serve.DinoClient` (start_finetune, watch_job, get_job, list_jobs, cancel_job)."""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ._stubs import load_stubs, training_stubs
from .tensors import to_tensor

__all__ = ["finetune_config", "sample_batch", "iter_batches", "load_dino_data",
           "job_status_dict", "LOSSES", "GATE_METRICS", "TERMINAL_STATES",
           "DEFAULT_CHUNK_BYTES"]

# Samples per upload message by default: as many as fit in 4 MiB (gRPC's default receive
# limit) less 64 KiB for the message framing; the `dino` CLI uses the same budget.
DEFAULT_CHUNK_BYTES = (4 << 20) - (64 << 10)

# Names accepted for FineTuneConfig.loss and AcceptanceRule.metric (as the `dino` CLI's).
LOSSES = ("l2", "h1", "reduced_h1", "reduced_h1_ms", "sketched_h1")
GATE_METRICS = ("l2", "h1", "reduced_h1")

# JobStatus states after which a job never changes.
TERMINAL_STATES = ("SUCCEEDED", "REJECTED", "FAILED", "CANCELLED")


def finetune_config(model: str, version: int = 0, loss: str | None = None, epochs: int = 0,
                    learning_rate: float = 0.0, batch_size: int = 0, l2_weight: float = 0.0,
                    h1_weight: float = 0.0, seed: int = 0, validation_fraction: float = 0.0,
                    gate_metric: str | None = None, max_regression: float = 0.0,
                    svd_rank: int = 0, subsample_size: int = 0, sketch_rank: int = 0,
                    description: str = "") -> Any:
    """A dino.v1.FineTuneConfig. Zeros and None mean the server's defaults (training.proto):
    loss h1, 100 epochs, learning rate 1e-3, batch size 32, ... ``loss`` is one of LOSSES,
    ``gate_metric`` one of GATE_METRICS."""
    tpb = training_stubs().tpb
    config = tpb.FineTuneConfig(
        base=load_stubs().pb.ModelRef(name=model, version=version), epochs=epochs,
        learning_rate=learning_rate, batch_size=batch_size, l2_weight=l2_weight,
        h1_weight=h1_weight, seed=seed, validation_fraction=validation_fraction,
        svd_rank=svd_rank, subsample_size=subsample_size, sketch_rank=sketch_rank,
        description=description)
    if loss is not None:
        if loss not in LOSSES:
            raise ValueError("loss must be one of %s, got %r" % (", ".join(LOSSES), loss))
        config.loss = tpb.Loss.Value(loss.upper())
    if gate_metric is not None:
        if gate_metric not in GATE_METRICS:
            raise ValueError("gate_metric must be one of %s, got %r"
                             % (", ".join(GATE_METRICS), gate_metric))
        config.acceptance.metric = tpb.GateMetric.Value(gate_metric.upper() + "_ACCURACY")
    if max_regression:
        config.acceptance.max_regression = max_regression
    return config


def sample_batch(m: Any, q: Any, J: Any = None, U: Any = None, sigma: Any = None,
                 V: Any = None, reduced_jacobian: Any = None, jacobian_norm_sq: Any = None,
                 validation: bool = False) -> Any:
    """A dino.v1.SampleBatch of b samples: m [b, d_M], q [b, d_Q] and at most one Jacobian
    form: the full J [b, d_Q, d_M]; its truncated SVD U [b, d_Q, r], sigma [b, r],
    V [b, d_M, r]; or reduced_jacobian Uᵀ J V [b, r_Q, r_M] in the model's bases (with the
    optional jacobian_norm_sq ‖J‖²_F [b]). ``validation``: these samples form the validation
    set."""
    tpb = training_stubs().tpb
    m, q = np.asarray(m), np.asarray(q)
    if m.ndim != 2 or q.ndim != 2 or m.shape[0] != q.shape[0]:
        raise ValueError("m and q must be [b, d_M] and [b, d_Q] with the same b, got %s and %s"
                         % (m.shape, q.shape))
    batch = tpb.SampleBatch(m=to_tensor(m), q=to_tensor(q), validation=validation)
    svd = (U, sigma, V)
    forms = [J is not None, any(a is not None for a in svd), reduced_jacobian is not None]
    if sum(forms) > 1:
        raise ValueError("give one Jacobian form: J, or U/sigma/V, or reduced_jacobian")
    if J is not None:
        batch.full.CopyFrom(to_tensor(J))
    elif forms[1]:
        if any(a is None for a in svd):
            raise ValueError("the SVD form needs U, sigma and V")
        batch.svd.u.CopyFrom(to_tensor(U))
        batch.svd.sigma.CopyFrom(to_tensor(sigma))
        batch.svd.v.CopyFrom(to_tensor(V))
    elif reduced_jacobian is not None:
        batch.reduced.reduced_jacobian.CopyFrom(to_tensor(reduced_jacobian))
        if jacobian_norm_sq is not None:
            batch.reduced.jacobian_norm_sq.CopyFrom(to_tensor(jacobian_norm_sq))
    return batch


def iter_batches(m: Any, q: Any, chunk: int | None = None, validation: bool = False,
                 max_bytes: int = DEFAULT_CHUNK_BYTES, **jacobian: Any
                 ) -> Iterator[dict[str, Any]]:
    """Cuts the arrays m [n, d_M], q [n, d_Q] and the Jacobian arrays (keyword arguments of
    sample_batch: J, or U/sigma/V, or reduced_jacobian/jacobian_norm_sq, each [n, ...]) into
    dicts of ``chunk`` samples each (default: as many as fit in ``max_bytes``, at least one),
    ready for DinoClient.start_finetune. Slicing makes no copies; encoding happens batch by
    batch."""
    arrays = {"m": m, "q": q}
    arrays.update({k: v for k, v in jacobian.items() if v is not None})
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    n = arrays["m"].shape[0]
    for name, a in arrays.items():
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError("%s must have %d samples along its first axis, has shape %s"
                             % (name, n, a.shape))
    if chunk is None:
        per_sample = sum(a[:1].nbytes for a in arrays.values())
        chunk = max(1, max_bytes // max(per_sample, 1))
    for start in range(0, n, chunk):
        batch: dict[str, Any] = {k: a[start:start + chunk] for k, a in arrays.items()}
        batch["validation"] = validation
        yield batch


def load_dino_data(directory: str, jacobian: str = "auto", count: int | None = None
                   ) -> dict[str, np.ndarray]:
    """Reads the dino / hIPPYflow data layout: {"m", "q"} from mq_data.npz (m_data, q_data),
    plus "J" from J_data.npz (jacobian="full") or "U", "sigma", "V" from Jsvd_data.npz
    (jacobian="svd"). "auto" takes J_data.npz if present, else Jsvd_data.npz, else neither
    ("none"). ``count`` keeps the first samples only."""
    files = {"full": ("J_data.npz", {"J": "J_data"}),
             "svd": ("Jsvd_data.npz", {"U": "U_data", "sigma": "sigma_data", "V": "V_data"})}
    if jacobian == "auto":
        jacobian = next((k for k in ("full", "svd")
                         if os.path.isfile(os.path.join(directory, files[k][0]))), "none")
    if jacobian not in ("full", "svd", "none"):
        raise ValueError("jacobian must be auto, full, svd or none, got %r" % (jacobian,))
    wanted = [("mq_data.npz", {"m": "m_data", "q": "q_data"})]
    if jacobian != "none":
        wanted.append(files[jacobian])
    data = {}
    for file, names in wanted:
        with np.load(os.path.join(directory, file)) as archive:
            for key, member in names.items():
                data[key] = archive[member][:count]
    return data


def _accuracies_dict(present: bool, a: Any) -> dict[str, Any] | None:
    if not present:
        return None
    return {"samples": a.samples, "l2": a.l2 if a.HasField("l2") else None,
            "h1": a.h1 if a.HasField("h1") else None,
            "reduced_h1": a.reduced_h1 if a.HasField("reduced_h1") else None}


def job_status_dict(status: Any) -> dict[str, Any]:
    """A dino.v1.JobStatus as a plain dict with the proto's field names (the JSON of
    `dino job --json`): "state" is the state's name ("SUCCEEDED", ...), "validation" and
    "base_validation" are None or {"samples", "l2", "h1", "reduced_h1"} (None when unknown)."""
    tpb = training_stubs().tpb
    return {
        "job_id": status.job_id,
        "base": {"name": status.base.name, "version": status.base.version},
        "state": tpb.JobState.Name(status.state),
        "message": status.message,
        "train_samples": status.train_samples,
        "validation_samples": status.validation_samples,
        "samples_received": status.samples_received,
        "bytes_received": status.bytes_received,
        "epoch": status.epoch,
        "epochs": status.epochs,
        "train_loss": status.train_loss,
        "validation_loss": status.validation_loss,
        "validation": _accuracies_dict(status.HasField("validation"), status.validation),
        "base_validation": _accuracies_dict(status.HasField("base_validation"),
                                            status.base_validation),
        "samples_per_second": status.samples_per_second,
        "eta_seconds": status.eta_seconds,
        "new_version": status.new_version,
        "created_unix_seconds": status.created_unix_seconds,
        "updated_unix_seconds": status.updated_unix_seconds,
        "revision": status.revision,
    }
