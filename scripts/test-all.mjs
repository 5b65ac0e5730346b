#!/usr/bin/env node
// npm test: every stage in order (npm run <stage>), each with its time, stopping at the first that
// fails; the times again at the end, so a CI log shows where its minutes went.
import { spawnSync } from 'node:child_process';

const STAGES = ['test:static', 'test:unit', 'test:kvm', 'test:host', 'test:example'];
const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
const done = [];
let status = 0;
for (const stage of STAGES) {
  const t0 = Date.now();
  const r = spawnSync(npm[0], [...npm.slice(1), 'run', stage], { stdio: 'inherit' });
  status = r.status ?? 1;
  const line = `${stage} ${status === 0 ? 'passed' : `FAILED (exit ${status})`} in ${((Date.now() - t0) / 1000).toFixed(0)} s`;
  done.push(line);
  console.error(`npm test: ${line}`);
  if (status !== 0) break;
}
console.error(`npm test: stages: ${done.join('; ')}`);
process.exit(status);
