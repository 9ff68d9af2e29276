'use strict';
// usage: node example.js [host:port] [model]   (a dino-server must be running there)
const { DinoClient } = require('.');

async function main() {
  const [target = '127.0.0.1:50051', model = 'poisson_dipnet'] = process.argv.slice(2);
  const client = new DinoClient(target, { token: process.env.DINO_TOKEN, deadlineMs: 10000 });
  try {
    console.log('models:', (await client.listModels()).map((m) => m.name).join(', '));
    const info = await client.getModelInfo(model);
    console.log(`${model} v${info.version}: d_M = ${info.inputDim}, d_Q = ${info.outputDim}`);
    const m = new Float64Array(info.inputDim).fill(0.1);
    const { q } = await client.evaluate(model, m);
    console.log('q[0:3] =', Array.from(q.data.subarray(0, 3)));
    const direction = new Float64Array(info.inputDim).fill(1);
    const { jvp } = await client.jvp(model, m, direction);
    console.log('(J 1)[0:3] =', Array.from(jvp.data.subarray(0, 3)));
    const { vjp } = await client.vjp(model, m, new Float64Array(info.outputDim).fill(1));
    console.log('(Jᵀ 1)[0:3] =', Array.from(vjp.data.subarray(0, 3)));
    const { hvp } = await client.hessianVectorProduct(model, m, new Float64Array(info.outputDim).fill(1),
        direction);
    console.log('(∂²⟨1, f⟩/∂m² 1)[0:3] =', Array.from(hvp.data.subarray(0, 3)));
    console.log('health:', await client.health());
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
