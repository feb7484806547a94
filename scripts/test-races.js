#!/usr/bin/env node
// The race check of the CUDA kernels without a GPU (`npm run test:races`): the core and the leak
// driver (test/native/leak_driver.cc) built with ThreadSanitizer, then `leak_driver
// --emulator-only`, which runs the kernels of native/core/block_kernels.h under the CPU emulator
// of thread blocks (block_emulator.cc: real threads meeting at a barrier where the GPU code calls
// __syncthreads()). Two threads of a block touching one workspace location with no barrier
// between them is a data race TSan reports, so a missing sync in the kernels fails this job, as
// compute-sanitizer's racecheck would on a GPU. (The barrier is a mutex and a condition
// variable, which TSan understands.) Linux with GCC or Clang; the build goes to build/tsan/.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const outDir = path.join(root, 'build', 'tsan');
const driver = path.join(outDir, 'leak_driver');
const cxx = process.env.CXX || 'g++';

function run(program, args, env) {
  const started = Date.now();
  const result = spawnSync(program, args, { stdio: 'inherit', env: { ...process.env, ...env } });
  if (result.error) throw result.error;
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.status !== 0) {
    console.error(`test:races: ${path.basename(program)} failed (${result.signal ?? `exit ${result.status}`}) after ${seconds} s`);
    process.exit(1);
  }
  console.log(`test:races: ${path.basename(program)} ${args[0] === '--emulator-only' ? 'ran' : 'built'} in ${seconds} s`);
}

const gyp = JSON.parse(
  fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8').replace(/^\s*#.*$/gm, ''),
).targets[0];
const coreSources = gyp.sources.filter((source) => !/addon\.cc$/.test(source)).map((s) => path.join(root, s));
fs.mkdirSync(outDir, { recursive: true });
run(cxx, [
  '-std=c++17', '-O1', '-g', '-fsanitize=thread', '-ffp-contract=off', '-fno-math-errno', '-pthread',
  '-o', driver, path.join(root, 'test', 'native', 'leak_driver.cc'), ...coreSources, '-ldl',
]);
run(driver, ['--emulator-only'], { TSAN_OPTIONS: 'halt_on_error=1 second_deadlock_stack=1' });
