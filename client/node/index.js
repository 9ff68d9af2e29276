'use strict';
// Node.js client of dino-serve's dino.v1.Surrogate service (proto/dino/v1/surrogate.proto):
// every inference RPC with Float64Array/Float32Array in and out, per-call deadlines, a bearer
// token and TLS. Arrays travel as dino.v1.Tensor: little-endian bytes of a typed array plus
// its shape, so nothing is converted element by element.
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

class DinoClient {
  // target: "host:port". options:
  //   token        bearer token, sent as "authorization: Bearer <token>" on every call
  //   deadlineMs   default deadline of each call (default 30000; 0: none)
  //   credentials  grpc.ChannelCredentials (default: insecure; grpc.credentials.createSsl()
  //                for TLS)
  //   protoRoot    folder holding dino/v1/surrogate.proto (default: this repository's proto/)
  //   maxMessageBytes  largest message sent or received (default 64 MiB, the server's default)
  constructor(target, options = {}) {
    const definition = protoLoader.loadSync('dino/v1/surrogate.proto', {
      includeDirs: [options.protoRoot || DEFAULT_PROTO_ROOT],
      keepCase: true,
      longs: Number,
      enums: String,
      bytes: Buffer,
      defaults: true,
    });
    const Surrogate = grpc.loadPackageDefinition(definition).dino.v1.Surrogate;
    const maxBytes = options.maxMessageBytes || 64 * 1024 * 1024;
    this.stub = new Surrogate(target, options.credentials || grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': maxBytes,
      'grpc.max_send_message_length': maxBytes,
    });
    this.token = options.token;
    this.deadlineMs = options.deadlineMs === undefined ? 30000 : options.deadlineMs;
  }

  close() {
    this.stub.close();
  }

  // Calls `method` with `request`; options.deadlineMs overrides the client's deadline.
  call(method, request, options = {}) {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    const deadlineMs = options.deadlineMs === undefined ? this.deadlineMs : options.deadlineMs;
    const callOptions = deadlineMs > 0 ? { deadline: new Date(Date.now() + deadlineMs) } : {};
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, callOptions, (error, response) => {
        if (error) reject(new DinoError(method, error));
        else resolve(response);
      });
    });
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
  //  architecture, dtype: 'FP32'|'FP64', metadata (parsed)}
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
}

module.exports = { DinoClient, DinoError, grpc };
