#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*), small valid and
nearly valid inputs for the models of fuzz/served_models.h (d_M = 4, d_Q = 3, r_M = r_Q = 2).

    /usr/bin/python3 fuzz/make_seeds.py <build>/python

<build>/python holds the Python protobuf code that proto/CMakeLists.txt generates. The seeds
are committed; rerun this only to change them (it rewrites only the seed-* files, never the
regression inputs found by fuzzing).
"""
import io
import json
import os
import struct
import sys
import zipfile

import numpy as np

sys.path.insert(0, sys.argv[1])
from dino.v1 import surrogate_pb2 as sp  # noqa: E402
from dino.v1 import training_pb2 as tp  # noqa: E402
from inference import grpc_predict_v2_pb2 as ip  # noqa: E402
from google.protobuf.internal.encoder import _VarintBytes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
D_M, D_Q, R_M, R_Q = 4, 3, 2, 2
rng = np.random.default_rng(7)


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def tensor(array, dtype=np.float64):
    array = np.asarray(array, dtype=dtype)
    return sp.Tensor(shape=list(array.shape), dtype=sp.FP64 if dtype == np.float64 else sp.FP32,
                     data=array.tobytes())


def orthonormal(rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


# ---- tensor_codec_fuzzer: dino.v1.Tensor -------------------------------------------------
for name, message in {
    "fp64-matrix": tensor(rng.standard_normal((2, D_M))),
    "fp32-vector": tensor(rng.standard_normal(D_M), np.float32),
    "fp64-scalar": tensor(np.float64(1.5)),
    "empty-rows": tensor(np.zeros((0, D_M))),
    "three-dims": tensor(rng.standard_normal((2, 1, D_M))),
    "short-data": sp.Tensor(shape=[2, 2], dtype=sp.FP64, data=b"\0" * 24),
    "no-dtype": sp.Tensor(shape=[1], data=b"\0" * 8),
    "negative-extent": sp.Tensor(shape=[-1, 2], dtype=sp.FP32, data=b""),
    "huge-shape": sp.Tensor(shape=[1 << 40, 1 << 40, 0], dtype=sp.FP32, data=b""),
}.items():
    write("tensor_codec_fuzzer", name, message.SerializeToString())

# ---- surrogate_request_fuzzer: selector byte + request -----------------------------------
m1, m2 = rng.standard_normal(D_M), rng.standard_normal((2, D_M))
requests = [
    (0, "evaluate", sp.EvaluateRequest(model=sp.ModelRef(name="dipnet"), m=tensor(m2))),
    (0, "evaluate-fp32-generic", sp.EvaluateRequest(
        model=sp.ModelRef(name="generic"), m=tensor(m1, np.float32), output_dtype=sp.FP64)),
    (0, "evaluate-label", sp.EvaluateRequest(model=sp.ModelRef(name="dipnet", label="stable"),
                                             m=tensor(m1))),
    (0, "evaluate-version", sp.EvaluateRequest(model=sp.ModelRef(name="dipnet", version=2),
                                               m=tensor(m2), output_dtype=sp.FP32)),
    (1, "jvp", sp.JvpRequest(model=sp.ModelRef(name="dipnet"), m=tensor(m1),
                             directions=tensor(rng.standard_normal((3, D_M))), return_q=True)),
    (1, "jvp-batch", sp.JvpRequest(model=sp.ModelRef(name="generic"), m=tensor(m2),
                                   directions=tensor(rng.standard_normal((2, 2, D_M))))),
    (2, "vjp", sp.VjpRequest(model=sp.ModelRef(name="dipnet"), m=tensor(m2),
                             cotangents=tensor(rng.standard_normal((2, D_Q))), return_q=True)),
    (2, "vjp-generic", sp.VjpRequest(model=sp.ModelRef(name="generic"), m=tensor(m1),
                                     cotangents=tensor(rng.standard_normal(D_Q)))),
    (3, "reduced-jacobian", sp.ReducedJacobianRequest(model=sp.ModelRef(name="dipnet"),
                                                      m=tensor(m2))),
    (3, "reduced-jacobian-bases", sp.ReducedJacobianRequest(
        model=sp.ModelRef(name="generic"), m=tensor(m1),
        output_basis=tensor(orthonormal(D_Q, 2)), input_basis=tensor(orthonormal(D_M, 2)))),
    (4, "jacobian", sp.JacobianRequest(model=sp.ModelRef(name="dipnet"), m=tensor(m1),
                                       return_q=True)),
    (4, "jacobian-generic", sp.JacobianRequest(model=sp.ModelRef(name="generic"),
                                               m=tensor(m1, np.float32))),
    (0, "unknown-model", sp.EvaluateRequest(model=sp.ModelRef(name="nope"), m=tensor(m1))),
]
for selector, name, message in requests:
    write("surrogate_request_fuzzer", name, bytes([selector]) + message.SerializeToString())

# ---- npy_fuzzer and npz_fuzzer ------------------------------------------------------------
arrays = {
    "f8-matrix": rng.standard_normal((3, D_M)),
    "f4-vector": rng.standard_normal(5).astype(np.float32),
    "i8-scalar": np.int64(42),
    "fortran": np.asfortranarray(rng.standard_normal((2, 3))),
    "big-endian": rng.standard_normal(3).astype(">f8"),
    "empty": np.zeros((0, 2)),
}
for name, array in arrays.items():
    out = io.BytesIO()
    np.save(out, array)
    write("npy_fuzzer", name, out.getvalue())
out = io.BytesIO()
np.lib.format.write_array(out, rng.standard_normal(2), version=(2, 0))
write("npy_fuzzer", "version-2", out.getvalue())
write("npy_fuzzer", "bad-dict", b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f8', 'shape': (2,}  \n")

plain = {"m": rng.standard_normal((2, D_M)), "q": rng.standard_normal((2, D_Q)).astype(np.float32)}
for name, save in (("stored", np.savez), ("deflated", np.savez_compressed)):
    out = io.BytesIO()
    save(out, **plain)
    write("npz_fuzzer", name, out.getvalue())
out = io.BytesIO()
with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
    with archive.open("zip64.npy", "w", force_zip64=True) as member:
        np.save(member, np.arange(4.0))
write("npz_fuzzer", "zip64", out.getvalue())

# ---- JSON texts: json_reader_fuzzer, model_config_fuzzer, model_metadata_fuzzer ----------
for name, text in {
    "object": '{"name": "dipnet", "input": [[1.5, -2e-3, 0, 4]], "config": {"version": 2}}',
    "escapes": '["a\\u00e9\\n\\"", "\\ud83d\\ude00", true, false, null, -0, 1E400]',
    "numbers": '[0, -1, 9223372036854775807, 9223372036854775808, 1.7976931348623157e308, 5e-324]',
    "nested": "[" * 70 + "]" * 70,
    "duplicate-keys": '{"a": 1, "a": {"b": [2, 3.25]}}',
}.items():
    write("json_reader_fuzzer", name, text)

for name, config in {
    "latest": {"version_policy": {"latest": {"num_versions": 2}}, "default_version": 3},
    "all-labels": {"version_policy": {"all": {}}, "labels": {"stable": 1, "canary": 2}},
    "specific": {"version_policy": {"specific": {"versions": [1, 3]}},
                 "unloaded_versions": [2]},
    "batching": {"batching": {"max_batch_size": 64, "batch_timeout_micros": 500,
                              "max_queue_size": 128}, "executors": 2},
}.items():
    write("model_config_fuzzer", name, json.dumps(config))
write("model_config_fuzzer", "bundled",
      open(os.path.join(HERE, "..", "models", "repository", "poisson_dipnet", "config.json"))
      .read() if os.path.exists(os.path.join(HERE, "..", "models", "repository", "poisson_dipnet",
                                             "config.json")) else "{}")

for name, document in {
    "pde-poisson": {"problem": "poisson", "mesh_cells": 8, "description": "small"},
    "pde-points": {"problem": "reaction_diffusion", "mesh_cells": 4,
                   "observation_points": [[0.25, 0.5], [1, 0]]},
    "metadata-problem": {"architecture": "dipnet", "problem": {"name": "poisson",
                                                               "mesh_cells": 1}},
    "metadata-provenance": {"data": {"train": {
        "generated_by": "dino-train generate --problem poisson --mesh 1"}}},
    "metadata-plain": {"architecture": "generic", "input_dim": 4, "dtype": "fp64"},
}.items():
    write("model_metadata_fuzzer", name, json.dumps(document))

# ---- http_fronts_fuzzer: selector byte, request line, Authorization, Content-Type, body ---
TOKEN = "fuzz-token"
point = [round(float(x), 6) for x in rng.standard_normal(D_M)]
sens = [round(float(x), 6) for x in rng.standard_normal(D_Q)]
umbridge = [
    ("info", "GET /Info", ""),
    ("model-info", "POST /ModelInfo", {"name": "dipnet"}),
    ("input-sizes", "POST /InputSizes", {"name": "dipnet", "config": {"label": "stable"}}),
    ("output-sizes", "POST /OutputSizes", {"name": "generic", "config": {}}),
    ("evaluate", "POST /Evaluate", {"name": "dipnet", "input": [point], "config": {"version": 2}}),
    ("gradient", "POST /Gradient", {"name": "dipnet", "outWrt": 0, "inWrt": 0, "input": [point],
                                    "sens": sens, "config": {"timeout_seconds": 5}}),
    ("apply-jacobian", "POST /ApplyJacobian", {"name": "generic", "outWrt": 0, "inWrt": 0,
                                               "input": [point], "vec": point}),
    ("apply-hessian", "POST /ApplyHessian", {"name": "dipnet", "outWrt": 0, "inWrt1": 0,
                                             "inWrt2": 0, "input": [point], "sens": sens,
                                             "vec": point}),
    ("shmem", "POST /EvaluateShMem", {"name": "dipnet"}),
]
oip = [
    ("live", "GET /v2/health/live", ""),
    ("ready", "GET /v2/health/ready", ""),
    ("server", "GET /v2", ""),
    ("model", "GET /v2/models/dipnet", ""),
    ("model-version-ready", "GET /v2/models/dipnet/versions/stable/ready", ""),
    ("infer", "POST /v2/models/dipnet/infer",
     {"id": "1", "inputs": [{"name": "m", "shape": [1, D_M], "datatype": "FP64", "data": point}],
      "outputs": [{"name": "q"}]}),
    ("infer-jvp", "POST /v2/models/generic/versions/1/infer",
     {"inputs": [{"name": "m", "shape": [D_M], "datatype": "FP32", "data": point},
                 {"name": "directions", "shape": [1, D_M], "datatype": "FP32", "data": point}],
      "outputs": [{"name": "jvp"}, {"name": "q"}], "parameters": {"output_datatype": "FP64"}}),
    ("infer-reduced", "POST /v2/models/dipnet/infer",
     {"inputs": [{"name": "m", "shape": [1, D_M], "datatype": "FP64", "data": point}],
      "outputs": [{"name": "reduced_jacobian"}]}),
    ("wrong-method", "DELETE /v2/models/dipnet", ""),
]
for front, routes in ((0, umbridge), (1, oip)):
    for name, line, body in routes:
        text = body if isinstance(body, str) else json.dumps(body)
        write("http_fronts_fuzzer", name,
              bytes([front]) + f"{line}\n\napplication/json\n{text}".encode())
        write("http_fronts_fuzzer", name + "-token",
              bytes([front | 2]) + f"{line}\nBearer {TOKEN}\napplication/json\n{text}".encode())
write("http_fronts_fuzzer", "basic-auth",
      bytes([2]) + b"POST /Evaluate\nBasic dXNlcjpmdXp6LXRva2Vu\n\n" +
      json.dumps({"name": "dipnet", "input": [point]}).encode())

# ---- oip_infer_fuzzer: inference.ModelInferRequest ---------------------------------------
def infer_input(name, array, datatype="FP64", raw=False):
    array = np.asarray(array, dtype=np.float64 if datatype == "FP64" else np.float32)
    tensor_ = ip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                    shape=list(array.shape))
    if not raw:
        field = tensor_.contents.fp64_contents if datatype == "FP64" else \
            tensor_.contents.fp32_contents
        field.extend(array.ravel().tolist())
    return tensor_


for name, message in {
    "evaluate": ip.ModelInferRequest(model_name="dipnet", inputs=[infer_input("m", m2)]),
    "jvp": ip.ModelInferRequest(
        model_name="generic", model_version="1",
        inputs=[infer_input("m", m1, "FP32"), infer_input("directions", m2, "FP32")],
        outputs=[ip.ModelInferRequest.InferRequestedOutputTensor(name="jvp"),
                 ip.ModelInferRequest.InferRequestedOutputTensor(name="q")]),
    "vjp": ip.ModelInferRequest(
        model_name="dipnet", model_version="stable",
        inputs=[infer_input("m", m2), infer_input("cotangents", rng.standard_normal((2, D_Q)))]),
    "jacobian": ip.ModelInferRequest(
        model_name="dipnet", inputs=[infer_input("m", m1)],
        outputs=[ip.ModelInferRequest.InferRequestedOutputTensor(name="jacobian")]),
    "reduced-bases": ip.ModelInferRequest(
        model_name="generic",
        inputs=[infer_input("m", m1), infer_input("output_basis", orthonormal(D_Q, 2)),
                infer_input("input_basis", orthonormal(D_M, 2))],
        outputs=[ip.ModelInferRequest.InferRequestedOutputTensor(name="reduced_jacobian")]),
    "raw": ip.ModelInferRequest(model_name="dipnet", inputs=[infer_input("m", m2, raw=True)],
                                raw_input_contents=[np.asarray(m2).tobytes()]),
}.items():
    write("oip_infer_fuzzer", name, message.SerializeToString())


# ---- training_upload_fuzzer: delimited FineTuneUpload messages ---------------------------
def stream(*messages):
    return b"".join(_VarintBytes(len(m.SerializeToString())) + m.SerializeToString()
                    for m in messages)


def config(model="dipnet", **kwargs):
    return tp.FineTuneUpload(config=tp.FineTuneConfig(base=sp.ModelRef(name=model), **kwargs))


def samples(b, form=None, validation=False, dtype=np.float64):
    batch = tp.SampleBatch(m=tensor(rng.standard_normal((b, D_M)), dtype),
                           q=tensor(rng.standard_normal((b, D_Q)), dtype), validation=validation)
    if form == "full":
        batch.full.CopyFrom(tensor(rng.standard_normal((b, D_Q, D_M)), dtype))
    elif form == "svd":
        r = 2
        batch.svd.u.CopyFrom(tensor(np.stack([orthonormal(D_Q, r) for _ in range(b)]), dtype))
        batch.svd.sigma.CopyFrom(tensor(np.abs(rng.standard_normal((b, r))), dtype))
        batch.svd.v.CopyFrom(tensor(np.stack([orthonormal(D_M, r) for _ in range(b)]), dtype))
    elif form == "reduced":
        batch.reduced.reduced_jacobian.CopyFrom(tensor(rng.standard_normal((b, R_Q, R_M)), dtype))
        batch.reduced.jacobian_norm_sq.CopyFrom(tensor(np.abs(rng.standard_normal(b)), dtype))
    return tp.FineTuneUpload(samples=batch)


for name, data in {
    "l2": stream(config(loss=tp.L2, epochs=2), samples(4), samples(2, validation=True)),
    "full": stream(config(loss=tp.H1, batch_size=2), samples(3, "full"), samples(2, "full")),
    "svd": stream(config("generic", loss=tp.REDUCED_H1, svd_rank=2), samples(3, "svd")),
    "reduced": stream(config(acceptance=tp.AcceptanceRule(metric=tp.H1_ACCURACY,
                                                          max_regression=0.01)),
                      samples(2, "reduced"), samples(2, "reduced", validation=True)),
    "fp32": stream(config("generic", loss=tp.SKETCHED_H1, sketch_rank=3),
                   samples(2, "full", dtype=np.float32)),
    "mixed-forms": stream(config(), samples(2, "full"), samples(2, "svd")),
    "bad-config": stream(config(validation_fraction=1.5)),
}.items():
    write("training_upload_fuzzer", name, data)

print("seeds written under", os.path.join(HERE, "corpus"))


# ---- libFuzzer dictionaries (dict/<target>.dict): the tokens of the JSON texts -------------
JSON_TOKENS = ['{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '-0', '1e308',
               '1e-400', '\\u0000', '\\ud800', '\\"', '9223372036854775808']
KEYS = {
    "json_reader_fuzzer": [],
    "model_config_fuzzer": ["version_policy", "latest", "num_versions", "all", "specific",
                            "versions", "default_version", "labels", "unloaded_versions",
                            "batching", "max_batch_size", "batch_timeout_micros",
                            "max_queue_size", "executors"],
    "model_metadata_fuzzer": ["problem", "poisson", "reaction_diffusion", "mesh_cells",
                              "observation_points", "description", "data", "train",
                              "generated_by", "dino-train generate --problem ", " --mesh ",
                              "architecture", "input_dim", "dtype", "fp64"],
    "http_fronts_fuzzer": ["GET ", "POST ", "/Info", "/ModelInfo", "/InputSizes", "/OutputSizes",
                           "/Evaluate", "/Gradient", "/ApplyJacobian", "/ApplyHessian",
                           "/TestShMem", "/v2", "/v2/models/", "/versions/", "/ready", "/infer",
                           "/v2/health/live", "/v2/health/ready", "Bearer ", "Basic ",
                           TOKEN, "name", "input", "config", "version", "label", "stable",
                           "timeout_seconds", "outWrt", "inWrt", "inWrt1", "inWrt2", "sens",
                           "vec", "dipnet", "generic", "inputs", "outputs", "shape",
                           "datatype", "FP32", "FP64", "parameters", "output_datatype",
                           "m", "directions", "cotangents", "output_basis", "input_basis",
                           "q", "jvp", "vjp", "reduced_jacobian", "jacobian", "id"],
}
os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)
for target, keys in KEYS.items():
    with open(os.path.join(HERE, "dict", target + ".dict"), "w") as f:
        for token in JSON_TOKENS + [f'"{k}"' for k in keys] + keys:
            f.write('"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"\n')
