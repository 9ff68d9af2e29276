'use strict';
// The Node client against a real dino-server serving the bundled poisson_dipnet, with the
// inference token required: every RPC, checked against the C++ gRPC client (the `dino` CLI)
// on the same points, plus Float32Array in and out, deadlines, the token and the errors.
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
  server = spawn(path.join(BIN, 'dino-server'), [
    `--model_repository=${REPOSITORY}`, '--port=0', '--metrics_port=-1', '--host=127.0.0.1',
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
