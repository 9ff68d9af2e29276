'use strict';
// The Node client against a real dino-server serving a scratch copy of the bundled
// poisson_dipnet and poisson_pde (fine-tuning publishes into it, model control writes its
// config.json), with the admin token, also required for inference: every RPC of every
// service. Inference is checked against the C++ gRPC client (the `dino` CLI) on the same
// points, the Hessian action against differences of the gradient, the prior against its
// identities; fine-tuning streams exact PDE data and is watched to its published version;
// then cancel, ModelAdmin, Float32Array in and out, deadlines, the token and the errors.
//
// Environment (set by ctest): DINO_BIN (folder with dino-server and dino), DINO_REPOSITORY.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const { DinoClient, DinoError } = require('..');

const BIN = process.env.DINO_BIN;
const REPOSITORY = process.env.DINO_REPOSITORY;
const MODEL = 'poisson_dipnet';
const PDE = 'poisson_pde';
const TOKEN = 'node-test-token';

// Deterministic standard-normal-ish values (sum of uniforms from an LCG).
function randomArray(n, seed) {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
  const out = new Float64Array(n);
  for (let i = 0; i < n; ++i) out[i] = next() + next() + next() - 1.5;
  return out;
}

// A .npy file's float64 data and shape (the format the `dino` CLI writes).
function readNpy(file) {
  const bytes = fs.readFileSync(file);
  const headerLength = bytes.readUInt16LE(8);
  const header = bytes.toString('latin1', 10, 10 + headerLength);
  assert.match(header, /'descr': '<f8'/);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim())
      .map(Number);
  const data = bytes.subarray(10 + headerLength);
  const aligned = new ArrayBuffer(data.length);
  new Uint8Array(aligned).set(data);
  return { data: new Float64Array(aligned), shape };
}

function relativeError(actual, expected) {
  assert.equal(actual.length, expected.length);
  let difference = 0;
  let norm = 0;
  for (let i = 0; i < expected.length; ++i) {
    difference += (actual[i] - expected[i]) ** 2;
    norm += expected[i] ** 2;
  }
  return Math.sqrt(difference / norm);
}

let server;
let target;
let scratch;
let client;

test.before(async () => {
  assert.ok(BIN && REPOSITORY, 'set DINO_BIN and DINO_REPOSITORY');
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'dino-node-'));
  fs.writeFileSync(path.join(scratch, 'token'), TOKEN);
  const repository = path.join(scratch, 'repository');
  for (const name of [MODEL, PDE]) {
    fs.cpSync(path.join(REPOSITORY, name), path.join(repository, name), { recursive: true });
  }
  server = spawn(path.join(BIN, 'dino-server'), [
    `--model_repository=${repository}`, '--port=0', '--metrics_port=-1', '--host=127.0.0.1',
    `--admin_token_file=${path.join(scratch, 'token')}`, '--require_token_for_inference',
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  target = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: server.stdout });
    lines.on('line', (line) => {
      const match = line.match(/listening on \S*:(\d+)/);
      if (match) resolve(`127.0.0.1:${match[1]}`);
    });
    server.on('exit', (code) => reject(new Error(`dino-server exited with ${code}`)));
  });
  client = new DinoClient(target, { token: TOKEN });
});

test.after(async () => {
  if (client) client.close();
  if (server) {
    const exited = new Promise((resolve) => server.on('exit', resolve));
    server.kill('SIGTERM');
    assert.equal(await exited, 0);
  }
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

// The C++ client's answer: `dino <command> … --out result.npy`.
function cpp(command, args) {
  const out = path.join(scratch, `${command}.npy`);
  execFileSync(path.join(BIN, 'dino'), [command, '--model', MODEL, ...args, '--out', out,
    '--server', target, '--token_file', path.join(scratch, 'token')], { cwd: scratch });
  return readNpy(out);
}

function saveJson(name, rows) {
  const file = path.join(scratch, name);
  fs.writeFileSync(file, JSON.stringify(rows.map((row) => Array.from(row))));
  return file;
}

test('ListModels and GetModelInfo', async () => {
  const models = await client.listModels();
  const model = models.find((m) => m.name === MODEL);
  assert.ok(model, JSON.stringify(models));
  assert.equal(model.versions.filter((v) => v.isDefault).length, 1);
  const info = await client.getModelInfo(MODEL);
  assert.equal(info.inputDim, 4225);
  assert.equal(info.outputDim, 50);
  assert.equal(info.hasReducedBases, true);
  assert.equal(info.dtype, 'FP64');
  assert.equal(typeof info.metadata, 'object');
});

test('Evaluate, Jvp, Vjp and Jacobian equal the C++ client', async () => {
  const points = [randomArray(4225, 1), randomArray(4225, 2)];
  const evaluated = await client.evaluate(MODEL, points);
  assert.ok(evaluated.q.data instanceof Float64Array);
  assert.deepEqual(evaluated.q.shape, [2, 50]);
  const q = cpp('eval', ['--m', saveJson('m.json', points)]);
  assert.ok(relativeError(evaluated.q.data, q.data) <= 1e-12);

  const m = points[0];
  const directions = [randomArray(4225, 3), randomArray(4225, 4)];
  const jvp = await client.jvp(MODEL, m, directions, { returnQ: true });
  assert.deepEqual(jvp.jvp.shape, [2, 50]);
  assert.ok(relativeError(jvp.jvp.data, cpp('jvp', ['--m', saveJson('p.json', [m]),
    '--v', saveJson('v.json', directions)]).data) <= 1e-12);
  assert.ok(relativeError(jvp.q.data, evaluated.q.data.subarray(0, 50)) <= 1e-12);

  const cotangents = { data: randomArray(3 * 50, 5), shape: [3, 50] };
  const vjp = await client.vjp(MODEL, m, cotangents);
  assert.deepEqual(vjp.vjp.shape, [3, 4225]);
  const rows = [0, 1, 2].map((i) => cotangents.data.subarray(i * 50, (i + 1) * 50));
  assert.ok(relativeError(vjp.vjp.data, cpp('vjp', ['--m', saveJson('p.json', [m]),
    '--w', saveJson('w.json', rows)]).data) <= 1e-12);

  const jacobian = await client.jacobian(MODEL, m);
  assert.deepEqual(jacobian.jacobian.shape, [50, 4225]);
  assert.ok(relativeError(jacobian.jacobian.data,
      cpp('jacobian', ['--m', saveJson('p.json', [m])]).data) <= 1e-12);
});

test('ReducedJacobian is Uᵀ J V with the served bases', async () => {
  const m = randomArray(4225, 6);
  const reduced = await client.reducedJacobian(MODEL, m);
  const bases = await client.getBases(MODEL);
  const [dQ, rQ] = bases.outputBasis.shape;
  const [dM, rM] = bases.inputBasis.shape;
  assert.deepEqual(reduced.reducedJacobian.shape, [1, rQ, rM]);
  const J = (await client.jacobian(MODEL, m)).jacobian.data;
  const U = bases.outputBasis.data;
  const V = bases.inputBasis.data;
  const JV = new Float64Array(dQ * rM);  // J V, [d_Q, r_M]
  for (let i = 0; i < dQ; ++i) {
    for (let k = 0; k < dM; ++k) {
      const a = J[i * dM + k];
      for (let j = 0; j < rM; ++j) JV[i * rM + j] += a * V[k * rM + j];
    }
  }
  const expected = new Float64Array(rQ * rM);  // Uᵀ (J V)
  for (let a = 0; a < rQ; ++a) {
    for (let i = 0; i < dQ; ++i) {
      const u = U[i * rQ + a];
      for (let j = 0; j < rM; ++j) expected[a * rM + j] += u * JV[i * rM + j];
    }
  }
  assert.ok(relativeError(reduced.reducedJacobian.data, expected) <= 1e-10);
});

test('Float32Array in and out', async () => {
  const m64 = randomArray(4225, 7);
  const m32 = Float32Array.from(m64);
  const single = await client.evaluate(MODEL, m32, { outputDtype: 'fp32' });
  assert.ok(single.q.data instanceof Float32Array);
  const double = await client.evaluate(MODEL, Float64Array.from(m32));
  assert.ok(relativeError(Float64Array.from(single.q.data), double.q.data) <= 1e-5);
});

test('deadlines, the token and errors', async () => {
  const m = randomArray(4225, 8);
  await assert.rejects(client.evaluate(MODEL, m, { deadlineMs: 1e-3 }),
      (e) => e instanceof DinoError && e.code === 'DEADLINE_EXCEEDED');
  const anonymous = new DinoClient(target);
  await assert.rejects(anonymous.evaluate(MODEL, m),
      (e) => e instanceof DinoError && e.code === 'UNAUTHENTICATED');
  anonymous.close();
  await assert.rejects(client.evaluate(MODEL, m.subarray(0, 10)),
      (e) => e.code === 'INVALID_ARGUMENT' && /\bm\b/.test(e.details));
  await assert.rejects(client.evaluate('nope', m), (e) => e.code === 'NOT_FOUND');
  await assert.rejects(client.evaluate({ name: MODEL, version: 999 }, m),
      (e) => e.code === 'NOT_FOUND');
  await assert.rejects(client.evaluate(MODEL, [1, 2, 3]), TypeError);
});

test('Health', async () => {
  assert.equal(await client.health(), 'SERVING');
  assert.equal(await client.health('dino.v1.Surrogate'), 'SERVING');
  await assert.rejects(client.health('no.such.Service'), (e) => e.code === 'NOT_FOUND');
});

// Row i of a [rows, n] typed array.
function row(a, i, n) {
  return a.subarray(i * n, (i + 1) * n);
}

test('HessianVectorProduct equals differences of the served gradient, in every shape', async () => {
  const d = 4225;
  const m = randomArray(d, 20);
  const s = randomArray(50, 21);
  const v = randomArray(d, 22);
  const { hvp } = await client.hessianVectorProduct(MODEL, m, s, v);
  assert.ok(hvp.data instanceof Float64Array);
  assert.deepEqual(hvp.shape, [1, d]);
  // H(m, s) v = d/dt J(m + t v)ᵀ s at t = 0.
  const h = 1e-5;
  const shifted = (sign) => m.map((x, i) => x + sign * h * v[i]);
  const plus = (await client.vjp(MODEL, shifted(1), s)).vjp.data;
  const minus = (await client.vjp(MODEL, shifted(-1), s)).vjp.data;
  const differences = plus.map((x, i) => (x - minus[i]) / (2 * h));
  assert.ok(relativeError(hvp.data, differences) <= 1e-5, relativeError(hvp.data, differences));

  // One point, k = 2 directions; B = 2 points with one each; B = 2 points with k = 2 each.
  const w = randomArray(d, 23);
  const k = await client.hessianVectorProduct(MODEL, m, s, [v, w]);
  assert.deepEqual(k.hvp.shape, [2, d]);
  assert.ok(relativeError(row(k.hvp.data, 0, d), hvp.data) <= 1e-12);
  const m2 = randomArray(d, 24);
  const s2 = randomArray(50, 25);
  const perPoint = await client.hessianVectorProduct(MODEL, [m, m2], [s, s2], [v, w]);
  assert.deepEqual(perPoint.hvp.shape, [2, d]);
  const second = await client.hessianVectorProduct(MODEL, m2, s2, w);
  assert.ok(relativeError(row(perPoint.hvp.data, 1, d), second.hvp.data) <= 1e-12);
  const directions = new Float64Array(4 * d);
  [v, w, w, v].forEach((x, i) => directions.set(x, i * d));
  const both = await client.hessianVectorProduct(MODEL, [m, m2], [s, s2],
      { data: directions, shape: [2, 2, d] }, { outputDtype: 'fp32' });
  assert.deepEqual(both.hvp.shape, [2, 2, d]);
  assert.ok(both.hvp.data instanceof Float32Array);
  assert.ok(relativeError(Float64Array.from(both.hvp.data.subarray(0, 2 * d)), k.hvp.data) <= 1e-5);

  await assert.rejects(client.hessianVectorProduct(PDE, m, s, v),
      (e) => e.code === 'UNIMPLEMENTED' && /second-order/.test(e.details));
  await assert.rejects(client.hessianVectorProduct(MODEL, [m, m2], s, [v, w]),
      (e) => e.code === 'INVALID_ARGUMENT' && /cotangents/.test(e.details));
});

test('Prior: GetPrior, SamplePrior, ApplyPrior', async () => {
  const prior = await client.getPrior(MODEL);
  assert.equal(prior.problem, 'poisson');
  assert.equal(prior.inputDim, 4225);
  assert.deepEqual(prior.mean.shape, [4225]);
  assert.equal(typeof prior.description, 'object');
  const { samples } = await client.samplePrior(MODEL, 2, { seed: 3 });
  assert.deepEqual(samples.shape, [2, 4225]);
  const again = await client.samplePrior(MODEL, 1, { seed: 3, firstIndex: 1 });
  assert.deepEqual(again.samples.data, samples.data.subarray(4225));
  const v = [randomArray(4225, 30), randomArray(4225, 31)];
  const { result: cv } = await client.applyPrior(MODEL, 'covariance', v);
  const { result: back } = await client.applyPrior(MODEL, 'precision', cv);
  assert.deepEqual(back.shape, [2, 4225]);
  const flat = new Float64Array(2 * 4225);
  v.forEach((x, i) => flat.set(x, i * 4225));
  assert.ok(relativeError(back.data, flat) <= 1e-8);
  await assert.rejects(client.applyPrior(MODEL, 'covariance', v, { withMean: true }),
      (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(client.applyPrior(MODEL, 'inverse', v), RangeError);
});

// Samples of the exact map in the DINO's bases: m from the prior, q and Uᵀ J V from poisson_pde.
async function exactBatches(count, seed, perBatch) {
  const { samples } = await client.samplePrior(MODEL, count, { seed });
  const bases = await client.getBases(MODEL);
  const { q } = await client.evaluate(PDE, samples);
  const { reducedJacobian } = await client.reducedJacobian(PDE, samples, {
    outputBasis: bases.outputBasis, inputBasis: bases.inputBasis });
  const [, rQ, rM] = reducedJacobian.shape;
  const batches = [];
  for (let first = 0; first < count; first += perBatch) {
    const b = Math.min(perBatch, count - first);
    batches.push({
      m: { data: samples.data.subarray(first * 4225, (first + b) * 4225), shape: [b, 4225] },
      q: { data: q.data.subarray(first * 50, (first + b) * 50), shape: [b, 50] },
      reducedJacobian: { data: reducedJacobian.data.subarray(first * rQ * rM, (first + b) * rQ * rM),
                         shape: [b, rQ, rM] },
    });
  }
  return batches;
}

async function watchToEnd(jobId) {
  const statuses = [];
  for await (const status of client.watchJob(jobId, { deadlineMs: 300000 })) statuses.push(status);
  return statuses;
}

test('Training and ModelAdmin: stream, watch, publish, cancel, pin, label, unload', async () => {
  const base = (await client.getModelInfo(MODEL)).version;
  const batches = await exactBatches(12, 41, 6);
  const progress = [];
  const { jobId, status } = await client.startFineTune(MODEL, batches, {
    loss: 'h1', epochs: 2, learningRate: 1e-5, seed: 1, maxRegression: 1,
    description: 'node client test', onProgress: (p) => progress.push(p.samples),
  });
  assert.deepEqual(progress, [6, 12]);
  assert.equal(status.jobId, jobId);
  assert.equal(status.samplesReceived, 12);
  const statuses = await watchToEnd(jobId);
  const final = statuses[statuses.length - 1];
  assert.equal(final.state, 'SUCCEEDED', final.message);
  assert.equal(final.newVersion, base + 1);
  assert.ok(final.validation.samples > 0);
  assert.deepEqual(await client.getJob(jobId), final);
  assert.ok((await client.listJobs()).some((job) => job.jobId === jobId));
  const published = await client.getModelInfo(MODEL);
  assert.equal(published.version, base + 1);
  assert.equal(published.metadata.fine_tune.description, 'node client test');

  // CancelJob stops a running job; nothing is published.
  const long = await client.startFineTune(MODEL, batches, { epochs: 1000000, seed: 2 });
  // Queued: cancelled at once; training: the job thread ends it at its next batch.
  const cancelling = await client.cancelJob(long.jobId);
  assert.ok(cancelling.state === 'CANCELLED' || cancelling.message === 'cancelling',
            JSON.stringify(cancelling));
  assert.equal((await watchToEnd(long.jobId)).pop().state, 'CANCELLED');
  // A client whose batches fail aborts the upload: the call rejects with the source's error
  // and the server cancels the job.
  const jobsBefore = (await client.listJobs()).length;
  async function* failing() {
    yield batches[0];
    throw new Error('the data source broke');
  }
  await assert.rejects(client.startFineTune(MODEL, failing(), { epochs: 1 }),
      /the data source broke/);
  const abandoned = (await client.listJobs()).slice(jobsBefore);
  assert.deepEqual(abandoned.map((job) => [job.state, job.message]),
                   [['CANCELLED', 'the client aborted the upload']]);
  // A batch the server refuses ends the call with its error, naming the field.
  await assert.rejects(client.startFineTune(MODEL, [{ ...batches[0], m: randomArray(10, 1) }]),
      (e) => e.code === 'INVALID_ARGUMENT' && /\bm\b/.test(e.details));
  await assert.rejects(client.cancelJob('no-such-job'), (e) => e.code === 'NOT_FOUND');
  assert.deepEqual((await client.listModels()).find((m) => m.name === MODEL).versions,
                   [{ version: base + 1, isDefault: true }]);

  // ModelAdmin: pin the base, label the new version, the refusals, unload it.
  await client.setDefaultVersion(MODEL, base);
  assert.equal((await client.getModelInfo(MODEL)).version, base);
  await client.setVersionLabel(MODEL, 'candidate', base + 1);
  assert.equal((await client.getModelInfo({ name: MODEL, label: 'candidate' })).version, base + 1);
  const m = randomArray(4225, 42);
  const labelled = await client.evaluate({ name: MODEL, label: 'candidate' }, m);
  assert.equal(labelled.version, base + 1);
  assert.equal((await client.evaluate(MODEL, m)).version, base);
  await assert.rejects(client.unloadVersion(MODEL, base),
      (e) => e.code === 'FAILED_PRECONDITION' && /default/.test(e.details));
  await client.setVersionLabel(MODEL, 'candidate', 0);
  await assert.rejects(client.getModelInfo({ name: MODEL, label: 'candidate' }),
      (e) => e.code === 'NOT_FOUND');
  await client.unloadVersion(MODEL, base + 1);
  await assert.rejects(client.evaluate({ name: MODEL, version: base + 1 }, m),
      (e) => e.code === 'NOT_FOUND');
  await client.setDefaultVersion(MODEL, 0);
  assert.deepEqual((await client.listModels()).find((x) => x.name === MODEL).versions,
                   [{ version: base, isDefault: true }]);
  await assert.rejects(client.setDefaultVersion(MODEL, 99), (e) => e.code === 'NOT_FOUND');

  const anonymous = new DinoClient(target);
  await assert.rejects(anonymous.listJobs(), (e) => e.code === 'UNAUTHENTICATED');
  anonymous.close();
});
