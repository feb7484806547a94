#!/usr/bin/env node
// `npm run test:gpu`: the CUDA suite (test/cuda.test.ts) on the real device. It sets
// IAFLOW_TEST_GPU=1, so the suite runs the 'cuda' backend's properties and leaves out the
// emulator's (which `npm test` runs; set IAFLOW_CUDA_EMULATOR=1 to run both). Without a usable
// device (no GPU, no driver, no library: build it with `npm run build:cuda`) the device's tests
// are skipped and the suite says why; with --require they fail instead (for a machine that is
// known to have a GPU).
//
//   node scripts/test-gpu.js [--require] [jest arguments...]
'use strict';
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const args = process.argv.slice(2);
const requireGpu = args.includes('--require');
const jestArgs = args.filter((arg) => arg !== '--require');
const env = { ...process.env, IAFLOW_TEST_GPU: '1', ...(requireGpu ? { IAFLOW_REQUIRE_GPU: '1' } : {}) };
const jest = require.resolve('jest/bin/jest', { paths: [root] });
const run = spawnSync(process.execPath, [jest, 'test/cuda.test.ts', ...jestArgs], { cwd: root, env, stdio: 'inherit' });
process.exit(run.status ?? 1);
