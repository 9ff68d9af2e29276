'use strict';
// Node.js client of dino-serve: every RPC a user needs, with Float64Array/Float32Array in and
// out, per-call deadlines, a bearer token and TLS. Services: dino.v1.Surrogate (inference and
// exact derivatives), dino.v1.Prior (the parameter's prior), dino.v1.Training (streamed
// fine-tuning, jobs), dino.v1.ModelAdmin (served versions) and grpc.health.v1.Health, all on
// one channel. Arrays travel as dino.v1.Tensor: little-endian bytes of a typed array plus its
// shape, so nothing is converted element by element.
//
//   const { DinoClient } = require('dino-serve-client');
//   const client = new DinoClient('127.0.0.1:50051');
//   const { q } = await client.evaluate('poisson_dipnet', new Float64Array(4225));
//   // q.data: Float64Array of d_Q values, q.shape: [1, 50]

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The proto of the repository this package lives in (client/node → proto/).
const DEFAULT_PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // The wire format is little-endian and typed arrays are native-endian.
  throw new Error('dino-serve-client needs a little-endian host');
}

// A gRPC failure: `code` is the status code's name ("INVALID_ARGUMENT", "NOT_FOUND", …),
// `details` the server's message (it names the field at fault).
class DinoError extends Error {
  constructor(method, serviceError) {
    const code = grpc.status[serviceError.code] || String(serviceError.code);
    super(`${method}: ${code}: ${serviceError.details}`);
    this.name = 'DinoError';
    this.method = method;
    this.code = code;
    this.details = serviceError.details;
  }
}

// An array argument: a Float64Array/Float32Array (shape [n]), {data, shape} with a typed
// array of prod(shape) elements, or an array of equally long typed arrays (rows, [B, n]).
function toWire(value, field) {
  let data;
  let shape;
  if (value instanceof Float64Array || value instanceof Float32Array) {
    data = value;
    shape = [value.length];
  } else if (value && (value.data instanceof Float64Array || value.data instanceof Float32Array)) {
    data = value.data;
    shape = Array.from(value.shape || [value.data.length]);
  } else if (Array.isArray(value) && value.length > 0 &&
             value.every((row) => row instanceof Float64Array || row instanceof Float32Array)) {
    const Type = value[0].constructor;
    const n = value[0].length;
    if (!value.every((row) => row.constructor === Type && row.length === n)) {
      throw new TypeError(`${field}: rows must be typed arrays of one type and one length`);
    }
    data = new Type(value.length * n);
    value.forEach((row, i) => data.set(row, i * n));
    shape = [value.length, n];
  } else {
    throw new TypeError(
        `${field} must be a Float64Array/Float32Array, {data, shape} or an array of rows`);
  }
  const elements = shape.reduce((a, b) => a * b, 1);
  if (elements !== data.length) {
    throw new RangeError(`${field}: shape [${shape}] needs ${elements} values, got ${data.length}`);
  }
  return {
    shape,
    dtype: data instanceof Float64Array ? 'FP64' : 'FP32',
    data: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
  };
}

// A dino.v1.Tensor as {data: Float64Array|Float32Array, shape}. The bytes are copied: the
// message's buffer need not be aligned for the typed array.
function fromWire(tensor) {
  if (!tensor) return undefined;
  const Type = tensor.dtype === 'FP32' ? Float32Array : Float64Array;
  const bytes = tensor.data;
  const aligned = new ArrayBuffer(bytes.length);
  new Uint8Array(aligned).set(bytes);
  return { data: new Type(aligned), shape: tensor.shape.map(Number) };
}

// A model argument: "name" or {name, version, label}.
function modelRef(model) {
  if (typeof model === 'string') return { name: model };
  if (model && typeof model.name === 'string') {
    return { name: model.name, version: model.version || 0, label: model.label || '' };
  }
  throw new TypeError('model must be a name or {name, version, label}');
}

function outputDtype(options) {
  const dtype = (options && options.outputDtype) || '';
  const wire = { '': 'DTYPE_UNSPECIFIED', fp32: 'FP32', fp64: 'FP64' }[dtype.toLowerCase()];
  if (wire === undefined) throw new RangeError(`outputDtype must be 'fp32' or 'fp64', got ${dtype}`);
  return wire;
}

// Names accepted for the fine-tuning loss and the gate metric (training.proto), and the prior
// operators (prior.proto), as the Python package spells them.
const LOSSES = ['l2', 'h1', 'reduced_h1', 'reduced_h1_ms', 'sketched_h1'];
const GATE_METRICS = ['l2', 'h1', 'reduced_h1'];
const PRIOR_OPERATORS = ['covariance', 'precision', 'covariance_sqrt',
  'covariance_sqrt_transpose', 'covariance_sqrt_inverse'];
// JobStatus states after which a job never changes.
const TERMINAL_STATES = ['SUCCEEDED', 'REJECTED', 'FAILED', 'CANCELLED'];

function oneOf(value, names, field) {
  const name = String(value).toLowerCase();
  if (!names.includes(name)) throw new RangeError(`${field} must be one of ${names.join(', ')}, got ${value}`);
  return name.toUpperCase();
}

// dino.v1.FineTuneConfig from {version, loss, epochs, learningRate, batchSize, l2Weight,
// h1Weight, seed, validationFraction, gateMetric, maxRegression, svdRank, subsampleSize,
// sketchRank, description}; absent fields are the server's defaults (training.proto).
function fineTuneConfig(model, options) {
  const config = {
    base: modelRef(model),
    epochs: options.epochs || 0,
    learning_rate: options.learningRate || 0,
    batch_size: options.batchSize || 0,
    l2_weight: options.l2Weight || 0,
    h1_weight: options.h1Weight || 0,
    seed: options.seed || 0,
    validation_fraction: options.validationFraction || 0,
    svd_rank: options.svdRank || 0,
    subsample_size: options.subsampleSize || 0,
    sketch_rank: options.sketchRank || 0,
    description: options.description || '',
    acceptance: { max_regression: options.maxRegression || 0 },
  };
  if (typeof options.version === 'number') config.base.version = options.version;
  if (options.loss !== undefined) config.loss = oneOf(options.loss, LOSSES, 'loss');
  if (options.gateMetric !== undefined) {
    config.acceptance.metric = `${oneOf(options.gateMetric, GATE_METRICS, 'gateMetric')}_ACCURACY`;
  }
  return config;
}

// dino.v1.SampleBatch from {m [b, d_M], q [b, d_Q], validation} and at most one Jacobian
// form: jacobian [b, d_Q, d_M]; u [b, d_Q, r], sigma [b, r], v [b, d_M, r] (its truncated
// SVD); or reducedJacobian [b, r_Q, r_M] in the model's bases with the optional
// jacobianNormSq [b] (‖J‖²_F).
function sampleBatch(batch) {
  const message = { m: toWire(batch.m, 'm'), q: toWire(batch.q, 'q'),
                    validation: Boolean(batch.validation) };
  const svd = batch.u !== undefined || batch.sigma !== undefined || batch.v !== undefined;
  const forms = [batch.jacobian !== undefined, svd, batch.reducedJacobian !== undefined];
  if (forms.filter(Boolean).length > 1) {
    throw new TypeError('give one Jacobian form: jacobian, or u/sigma/v, or reducedJacobian');
  }
  if (batch.jacobian !== undefined) {
    message.full = toWire(batch.jacobian, 'jacobian');
  } else if (svd) {
    if (batch.u === undefined || batch.sigma === undefined || batch.v === undefined) {
      throw new TypeError('the SVD form needs u, sigma and v');
    }
    message.svd = { u: toWire(batch.u, 'u'), sigma: toWire(batch.sigma, 'sigma'),
                    v: toWire(batch.v, 'v') };
  } else if (batch.reducedJacobian !== undefined) {
    message.reduced = { reduced_jacobian: toWire(batch.reducedJacobian, 'reducedJacobian') };
    if (batch.jacobianNormSq !== undefined) {
      message.reduced.jacobian_norm_sq = toWire(batch.jacobianNormSq, 'jacobianNormSq');
    }
  }
  return message;
}

function accuracies(a) {
  if (!a) return null;
  const value = (x) => (x === undefined || x === null ? null : x);
  return { samples: a.samples, l2: value(a.l2), h1: value(a.h1), reducedH1: value(a.reduced_h1) };
}

// dino.v1.JobStatus with camelCase names; validation/baseValidation are null or
// {samples, l2, h1, reducedH1} (null where the data cannot determine it).
function jobStatus(s) {
  return {
    jobId: s.job_id,
    base: s.base ? { name: s.base.name, version: s.base.version } : null,
    state: s.state,
    message: s.message,
    trainSamples: s.train_samples,
    validationSamples: s.validation_samples,
    samplesReceived: s.samples_received,
    bytesReceived: s.bytes_received,
    epoch: s.epoch,
    epochs: s.epochs,
    trainLoss: s.train_loss,
    validationLoss: s.validation_loss,
    validation: accuracies(s.validation),
    baseValidation: accuracies(s.base_validation),
    samplesPerSecond: s.samples_per_second,
    etaSeconds: s.eta_seconds,
    newVersion: s.new_version,
    createdUnixSeconds: s.created_unix_seconds,
    updatedUnixSeconds: s.updated_unix_seconds,
    revision: s.revision,
  };
}

const PROTO_FILES = ['dino/v1/surrogate.proto', 'dino/v1/prior.proto', 'dino/v1/training.proto',
  'grpc/health/v1/health.proto'];

class DinoClient {
  // target: "host:port". options:
  //   token        bearer token, sent as "authorization: Bearer <token>" on every call (model
  //                control needs the server's admin token; inference needs one with
  //                --require_token_for_inference)
  //   deadlineMs   default deadline of each unary call (default 30000; 0: none); streams
  //                (startFineTune, watchJob) have none unless their options give one
  //   credentials  grpc.ChannelCredentials (default: insecure; grpc.credentials.createSsl()
  //                for TLS)
  //   protoRoot    folder holding dino/v1/*.proto and grpc/health/v1/health.proto (default:
  //                this repository's proto/)
  //   maxMessageBytes  largest message sent or received (default 64 MiB, the server's default)
  constructor(target, options = {}) {
    const definition = protoLoader.loadSync(PROTO_FILES, {
      includeDirs: [options.protoRoot || DEFAULT_PROTO_ROOT],
      keepCase: true,
      longs: Number,
      enums: String,
      bytes: Buffer,
      defaults: true,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition);
    const maxBytes = options.maxMessageBytes || 64 * 1024 * 1024;
    const credentials = options.credentials || grpc.credentials.createInsecure();
    // The Surrogate stub owns the channel; the other services share it.
    this.stub = new loaded.dino.v1.Surrogate(target, credentials, {
      'grpc.max_receive_message_length': maxBytes,
      'grpc.max_send_message_length': maxBytes,
    });
    const shared = { channelOverride: this.stub.getChannel() };
    this.stubs = {
      Surrogate: this.stub,
      Prior: new loaded.dino.v1.Prior(target, credentials, shared),
      Training: new loaded.dino.v1.Training(target, credentials, shared),
      ModelAdmin: new loaded.dino.v1.ModelAdmin(target, credentials, shared),
      Health: new loaded.grpc.health.v1.Health(target, credentials, shared),
    };
    this.token = options.token;
    this.deadlineMs = options.deadlineMs === undefined ? 30000 : options.deadlineMs;
  }

  close() {
    this.stub.close();
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  // gRPC call options for options.deadlineMs, else `fallbackMs` (0: no deadline).
  static callOptions(options, fallbackMs) {
    const deadlineMs = options.deadlineMs === undefined ? fallbackMs : options.deadlineMs;
    return deadlineMs > 0 ? { deadline: new Date(Date.now() + deadlineMs) } : {};
  }

  // Calls the unary `method` of `service` ('Surrogate', 'Prior', 'Training', 'ModelAdmin',
  // 'Health') with `request`; options.deadlineMs overrides the client's deadline.
  unary(service, method, request, options = {}) {
    const callOptions = DinoClient.callOptions(options, this.deadlineMs);
    return new Promise((resolve, reject) => {
      this.stubs[service][method](request, this.metadata(), callOptions, (error, response) => {
        if (error) reject(new DinoError(method, error));
        else resolve(response);
      });
    });
  }

  // A dino.v1.Surrogate call.
  call(method, request, options = {}) {
    return this.unary('Surrogate', method, request, options);
  }

  // grpc.health.v1 status of `service` ('' the server, or 'dino.v1.Surrogate'): 'SERVING', …
  async health(service = '', options = {}) {
    return (await this.unary('Health', 'Check', { service }, options)).status;
  }

  // [{name, versions: [{version, isDefault}]}]
  async listModels(options) {
    const response = await this.call('ListModels', {}, options);
    return response.models.map((model) => ({
      name: model.name,
      versions: model.versions.map((v) => ({ version: v.version, isDefault: v.is_default })),
    }));
  }

  // {name, version, versions, inputDim, outputDim, hasReducedBases, inputRank, outputRank,
  //  architecture, dtype: 'FP32'|'FP64', hasPrior, metadata (parsed)}
  async getModelInfo(model, options) {
    const r = await this.call('GetModelInfo', { model: modelRef(model) }, options);
    return {
      name: r.name,
      version: r.version,
      versions: r.versions,
      inputDim: r.input_dim,
      outputDim: r.output_dim,
      hasReducedBases: r.has_reduced_bases,
      inputRank: r.input_rank,
      outputRank: r.output_rank,
      architecture: r.architecture,
      dtype: r.dtype,
      hasPrior: r.has_prior,
      metadata: r.metadata_json ? JSON.parse(r.metadata_json) : {},
    };
  }

  // f(m): m [d_M] or [B, d_M] → {q: [B, d_Q], version}.
  async evaluate(model, m, options = {}) {
    const r = await this.call('Evaluate', {
      model: modelRef(model), m: toWire(m, 'm'), output_dtype: outputDtype(options),
    }, options);
    return { q: fromWire(r.q), version: r.version };
  }

  // J(m) v: one point and directions [k, d_M] (or [d_M]) → jvp [k, d_Q]; B points and
  // directions [B, d_M] → [B, d_Q]; see surrogate.proto. options.returnQ adds q.
  async jvp(model, m, directions, options = {}) {
    const r = await this.call('Jvp', {
      model: modelRef(model), m: toWire(m, 'm'), directions: toWire(directions, 'directions'),
      return_q: Boolean(options.returnQ), output_dtype: outputDtype(options),
    }, options);
    return { jvp: fromWire(r.jvp), q: options.returnQ ? fromWire(r.q) : undefined,
             version: r.version };
  }

  // J(m)ᵀ w: cotangents [k, d_Q] (or [d_Q]) → vjp [k, d_M]; shapes as jvp.
  async vjp(model, m, cotangents, options = {}) {
    const r = await this.call('Vjp', {
      model: modelRef(model), m: toWire(m, 'm'), cotangents: toWire(cotangents, 'cotangents'),
      return_q: Boolean(options.returnQ), output_dtype: outputDtype(options),
    }, options);
    return { vjp: fromWire(r.vjp), q: options.returnQ ? fromWire(r.q) : undefined,
             version: r.version };
  }

  // Uᵀ J(m) V in the model's bases ([B, r_Q, r_M]), or U_cᵀ J V_c in client bases given as
  // options.outputBasis [d_Q, k_Q] and options.inputBasis [d_M, k_M]; with q [B, d_Q].
  async reducedJacobian(model, m, options = {}) {
    const request = { model: modelRef(model), m: toWire(m, 'm'),
                      output_dtype: outputDtype(options) };
    if (options.outputBasis) request.output_basis = toWire(options.outputBasis, 'outputBasis');
    if (options.inputBasis) request.input_basis = toWire(options.inputBasis, 'inputBasis');
    const r = await this.call('ReducedJacobian', request, options);
    return { reducedJacobian: fromWire(r.reduced_jacobian), q: fromWire(r.q),
             version: r.version };
  }

  // The full Jacobian [d_Q, d_M] at one point (options.returnQ adds q [d_Q]).
  async jacobian(model, m, options = {}) {
    const r = await this.call('Jacobian', {
      model: modelRef(model), m: toWire(m, 'm'), return_q: Boolean(options.returnQ),
      output_dtype: outputDtype(options),
    }, options);
    return { jacobian: fromWire(r.jacobian), q: options.returnQ ? fromWire(r.q) : undefined,
             version: r.version };
  }

  // A reduced-basis model's bases: {inputBasis V [d_M, r_M], outputBasis U [d_Q, r_Q],
  // outputShift b [d_Q]}.
  async getBases(model, options = {}) {
    const r = await this.call('GetBases', { model: modelRef(model),
                                            output_dtype: outputDtype(options) }, options);
    return { inputBasis: fromWire(r.input_basis), outputBasis: fromWire(r.output_basis),
             outputShift: fromWire(r.output_shift), version: r.version };
  }

  // Exact Hessian actions H(m, s)·v, H(m, s) = ∂²⟨s, f⟩/∂m² (double backward, not
  // Gauss–Newton), with one cotangent s per point and the directions in jvp's shapes: one point,
  // s [d_Q], directions [k, d_M] (or [d_M]) → hvp [k, d_M]; B points, s [B, d_Q], directions
  // [B, d_M] → [B, d_M] or {data, shape: [B, k, d_M]} → [B, k, d_M]. UNIMPLEMENTED for models
  // without a second-order action (the exact PDE models).
  async hessianVectorProduct(model, m, cotangents, directions, options = {}) {
    const r = await this.call('HessianVectorProduct', {
      model: modelRef(model), m: toWire(m, 'm'), cotangents: toWire(cotangents, 'cotangents'),
      directions: toWire(directions, 'directions'), output_dtype: outputDtype(options),
    }, options);
    return { hvp: fromWire(r.hvp), version: r.version };
  }

  // The Gaussian prior N(m̄, C) of the model's parameter (dino.v1.Prior/GetPrior): {version,
  // inputDim, mean [d_M], problem, meshCells, source, description (parsed JSON)}.
  async getPrior(model, options = {}) {
    const r = await this.unary('Prior', 'GetPrior', {
      model: modelRef(model), output_dtype: outputDtype(options),
    }, options);
    return {
      version: r.version, inputDim: r.input_dim, mean: fromWire(r.mean), problem: r.problem,
      meshCells: r.mesh_cells, source: r.source,
      description: r.description_json ? JSON.parse(r.description_json) : {},
    };
  }

  // `count` prior samples [count, d_M]: sample i is sample options.firstIndex + i of
  // `dino-train generate --seed options.seed` (reproducible anywhere).
  async samplePrior(model, count, options = {}) {
    const r = await this.unary('Prior', 'SamplePrior', {
      model: modelRef(model), count, seed: options.seed || 0, first_index: options.firstIndex || 0,
      output_dtype: outputDtype(options),
    }, options);
    return { samples: fromWire(r.samples), version: r.version };
  }

  // One prior operator on k vectors ([k, d_M] or [d_M]) → result of the same shape.
  // `operator`: 'covariance' (C), 'precision' (C⁻¹), 'covariance_sqrt' (G, GGᵀ = C),
  // 'covariance_sqrt_transpose' (Gᵀ) or 'covariance_sqrt_inverse' (G⁻¹); options.withMean
  // for the affine maps of prior.proto.
  async applyPrior(model, operator, vectors, options = {}) {
    const r = await this.unary('Prior', 'ApplyPrior', {
      model: modelRef(model), prior_operator: oneOf(operator, PRIOR_OPERATORS, 'operator'),
      vectors: toWire(vectors, 'vectors'), with_mean: Boolean(options.withMean),
      output_dtype: outputDtype(options),
    }, options);
    return { result: fromWire(r.result), version: r.version };
  }

  // Uploads a fine-tuning job (dino.v1.Training/StartFineTune, client streaming): the config
  // from `options` (version, loss, epochs, learningRate, batchSize, l2Weight, h1Weight, seed,
  // validationFraction, gateMetric, maxRegression, svdRank, subsampleSize, sketchRank,
  // description; absent: the server's defaults), then one SampleBatch per element of `batches`
  // (an array, iterable or async iterable of {m, q, validation} plus one Jacobian form:
  // jacobian, or u/sigma/v, or reducedJacobian with optional jacobianNormSq), written as the
  // stream's flow control allows. Resolves to {jobId, status} once the upload is complete;
  // training then runs on the server (watchJob). options.onProgress({batches, samples,
  // validationSamples, bytes}) is called after each batch. An error thrown by `batches` aborts
  // the upload (the server cancels the job) and is rethrown. Never retried.
  async startFineTune(model, batches, options = {}) {
    const config = fineTuneConfig(model, options);
    let call;
    const response = new Promise((resolve, reject) => {
      call = this.stubs.Training.StartFineTune(
          this.metadata(), DinoClient.callOptions(options, 0),
          (error, r) => (error ? reject(new DinoError('StartFineTune', error)) : resolve(r)));
    });
    // Writes one message; settles early when the server ends the call (an error it sent).
    const send = (message) => Promise.race([response, new Promise((resolve) => {
      if (call.write(message)) resolve();
      else call.once('drain', resolve);
    })]);
    const sent = { batches: 0, samples: 0, validationSamples: 0, bytes: 0 };
    try {
      await send({ config });
      for await (const batch of batches) {
        const samples = sampleBatch(batch);
        await send({ samples });
        const rows = samples.m.shape.length > 1 ? samples.m.shape[0] : 1;
        sent.batches += 1;
        sent.samples += rows;
        if (samples.validation) sent.validationSamples += rows;
        sent.bytes += wireBytes(samples);
        if (options.onProgress) options.onProgress({ ...sent });
      }
    } catch (error) {
      if (error instanceof DinoError) throw error;  // The server ended the call.
      // Abort through the stream itself, with the empty message of training.proto: a bare
      // call.cancel() is not enough, because Node's HTTP/2 stream, cancelled before it is
      // established, sends END_STREAM ahead of its RST_STREAM, which the server must take for
      // a complete upload.
      call.write({});
      call.end();
      await response.catch(() => {});
      throw error;
    }
    call.end();
    const r = await response;
    return { jobId: r.job_id, status: jobStatus(r.status) };
  }

  // The job's status now and at every change until it ends (SUCCEEDED, REJECTED, FAILED,
  // CANCELLED), as an async iterator: `for await (const status of client.watchJob(id))`.
  // Leaving the loop early stops watching (not the job). No deadline unless options.deadlineMs.
  async* watchJob(jobId, options = {}) {
    const call = this.stubs.Training.WatchJob({ job_id: jobId }, this.metadata(),
        DinoClient.callOptions(options, 0));
    call.on('error', () => {});  // Seen by the iterator below; this keeps a late one quiet.
    try {
      for await (const status of call) yield jobStatus(status);
    } catch (error) {
      throw typeof error.code === 'number' ? new DinoError('WatchJob', error) : error;
    } finally {
      call.cancel();
    }
  }

  async getJob(jobId, options) {
    return jobStatus(await this.unary('Training', 'GetJob', { job_id: jobId }, options));
  }

  // Every job's status, oldest first.
  async listJobs(options) {
    return (await this.unary('Training', 'ListJobs', {}, options)).jobs.map(jobStatus);
  }

  // Stops a job that has not ended (nothing is published); its status.
  async cancelJob(jobId, options) {
    return jobStatus(await this.unary('Training', 'CancelJob', { job_id: jobId }, options));
  }

  // Requests without a version get `version` from now on; 0 clears the pin (dino.v1.ModelAdmin).
  async setDefaultVersion(model, version, options) {
    await this.unary('ModelAdmin', 'SetDefaultVersion', { name: model, version }, options);
  }

  // Points `label` at `version` (0 removes the label); requests address it as {name, label}.
  async setVersionLabel(model, label, version, options) {
    await this.unary('ModelAdmin', 'SetVersionLabel', { name: model, label, version }, options);
  }

  // Takes `version` out of service, persistently (training.proto).
  async unloadVersion(model, version, options) {
    await this.unary('ModelAdmin', 'UnloadVersion', { name: model, version }, options);
  }
}

// Payload bytes of the tensors in a message.
function wireBytes(message) {
  if (Buffer.isBuffer(message)) return message.length;
  if (!message || typeof message !== 'object') return 0;
  return Object.values(message).reduce((total, value) => total + wireBytes(value), 0);
}

module.exports = { DinoClient, DinoError, grpc, LOSSES, GATE_METRICS, PRIOR_OPERATORS,
                   TERMINAL_STATES };
