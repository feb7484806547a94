#!/usr/bin/env node
// The sanitizer job (`npm run test:asan`): builds the native addon with AddressSanitizer and
// UndefinedBehaviorSanitizer and runs the native-heavy jest suites against that build, then builds
// a small C++ driver over the core alone (no Node) and runs it with LeakSanitizer on.
//
//   node scripts/test-asan.js                   build (incrementally), check, run the default suites
//   node scripts/test-asan.js test/flow.test.ts only these suites (any jest arguments pass through)
//   node scripts/test-asan.js --build-only      build the sanitized addon and the driver, run nothing
//   node scripts/test-asan.js --no-jest         the leak driver only
//   node scripts/test-asan.js --no-leak-driver  the jest suites only
//
// Linux with GCC only (the runtime libraries are GCC's libasan and libubsan; CXX may name another
// g++). The sanitized build goes to build/asan/ (object files, the driver, and
// build/asan/build/Release/iaflow.node): build/Release, which the normal tests and node-gyp-build
// load, is never touched. The tests load the sanitized addon because node-gyp-build looks in the
// folder named by IAFLOW_PREBUILD (<PACKAGE NAME>_PREBUILD) before the package's own; the script
// checks that before running anything.
//
// Node itself is not instrumented, so the sanitizer runtime is preloaded (LD_PRELOAD) into every
// node process of the run (jest, its workers, and the children the tests spawn). Leak detection
// is off there: a process that ends by process.exit (or with a worker still running) does not
// tear V8 and Node down, by design, so LeakSanitizer reports allocations that are not the addon's
// (V8's heap slot sets, ~30 KB per such exit; the Node-API references of jest's own resolver
// addon) and fails the run for them. Leaks of the core are checked by the driver instead, in a
// process that owns every allocation.
//
// Every ASan and LSan report goes to a file under build/asan/reports/ (log_path), so a report from
// a child process whose output a test swallows still fails the job; the files are printed at the
// end. UBSan reports go to stderr instead: GCC's UBSan runtime, loaded beside ASan's, ignores
// log_path. halt_on_error makes either kind end the process that hit it, so the test that ran it
// (or spawned it and expected a clean exit) fails.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const outDir = path.join(root, 'build', 'asan');
const objDir = path.join(outDir, 'obj');
const addonDir = path.join(outDir, 'build', 'Release');
const addonPath = path.join(addonDir, 'iaflow.node');
const reportDir = path.join(outDir, 'reports');
const driverSource = path.join(root, 'test', 'native', 'leak_driver.cc');
const driverPath = path.join(outDir, 'leak_driver');

// The suites that spend their time in the addon (inference, training, the oracles, loading model
// files). The CLI, packaging, README and type suites mostly spawn processes or run TypeScript.
const defaultSuites = [
  'test/backend.test.ts',
  'test/flow.test.ts',
  'test/conditional.test.ts',
  'test/train.test.ts',
  'test/normals.test.ts',
  'test/reference.test.ts',
  'test/validation.test.ts',
  'test/safetensors.test.ts',
  'test/io.test.ts',
];

// float-cast-overflow (an out-of-range float -> integer conversion, undefined in C++) is not part
// of GCC's -fsanitize=undefined. float-divide-by-zero stays off: IEEE division by zero is defined
// and the core relies on it (infinities, NaN).
const sanitizeFlags = ['-fsanitize=address,undefined,float-cast-overflow', '-fno-omit-frame-pointer', '-g'];
// libstdc++'s own checks: _GLIBCXX_ASSERTIONS bounds-checks operator[] and front()/back() (ASan
// misses an index past size() but within capacity); _GLIBCXX_SANITIZE_VECTOR has ASan poison that
// spare capacity too.
const libraryChecks = ['-D_GLIBCXX_ASSERTIONS', '-D_GLIBCXX_SANITIZE_VECTOR'];
// -O1: ASan's recommendation (readable stacks, about 2x slower than -O3). Every memory access is
// instrumented at any level, the SIMD kernels' vector loads and stores included.
const optimizeFlags = ['-O1'];

function fail(message) {
  process.stderr.write(`test:asan: ${message}\n`);
  process.exit(1);
}

function log(message) {
  process.stdout.write(`test:asan: ${message}\n`);
}

function parseArguments(argv) {
  const options = { buildOnly: false, jest: true, leakDriver: true, jestArgs: [] };
  for (const arg of argv) {
    if (arg === '--build-only') options.buildOnly = true;
    else if (arg === '--no-jest') options.jest = false;
    else if (arg === '--no-leak-driver') options.leakDriver = false;
    else options.jestArgs.push(arg);
  }
  if (!options.jestArgs.some((arg) => !arg.startsWith('-'))) options.jestArgs.push(...defaultSuites);
  return options;
}

// binding.gyp is a Python literal; this one is also JSON once '#' comments are dropped.
function readBindingGyp() {
  const text = fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8');
  const withoutComments = text.replace(/^\s*#.*$/gm, '');
  let gyp;
  try {
    gyp = JSON.parse(withoutComments);
  } catch (error) {
    fail(`binding.gyp is not plain JSON, which this script reads (${error.message})`);
  }
  const target = gyp.targets.find((t) => t.target_name === 'iaflow');
  if (!target) fail('binding.gyp has no target named iaflow');
  return target;
}

function compilerRuntime(cxx, name) {
  const result = spawnSync(cxx, [`-print-file-name=${name}`], { encoding: 'utf8' });
  const file = result.status === 0 ? result.stdout.trim() : '';
  if (!file || !path.isAbsolute(file) || !fs.existsSync(file)) {
    fail(`${cxx} has no ${name} (install GCC's sanitizer runtimes, e.g. the libasan and libubsan packages)`);
  }
  return fs.realpathSync(file);
}

// Node's C headers (node_api.h): at the running node's install prefix (official builds, distros'
// nodejs-dev), else where node-gyp keeps the headers it downloads.
function nodeIncludeDir() {
  const candidates = [];
  if (process.env.npm_config_nodedir) candidates.push(path.join(process.env.npm_config_nodedir, 'include', 'node'));
  candidates.push(path.join(path.dirname(path.dirname(process.execPath)), 'include', 'node'));
  const version = process.versions.node;
  const cacheHome = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  candidates.push(path.join(cacheHome, 'node-gyp', version, 'include', 'node'));
  candidates.push(path.join(os.homedir(), '.node-gyp', version, 'include', 'node'));
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, 'node_api.h')));
  if (!found) fail(`no node_api.h in ${candidates.join(', ')} (run \`npx node-gyp install\` to fetch Node's headers)`);
  return found;
}

function newestMtime(files) {
  return Math.max(...files.map((file) => fs.statSync(file).mtimeMs));
}

function headersUnder(dir) {
  return fs
    .readdirSync(dir, { recursive: true })
    .filter((name) => /\.(h|hh|hpp)$/.test(name))
    .map((name) => path.join(dir, name));
}

// Runs commands, at most `jobs` at a time; rejects with the first failure's output.
async function runAll(commands, jobs) {
  let next = 0;
  async function worker() {
    while (next < commands.length) {
      const { program, args, label } = commands[next++];
      log(label);
      await new Promise((resolve, reject) => {
        const child = spawn(program, args, { stdio: ['ignore', 'inherit', 'inherit'] });
        child.on('error', reject);
        child.on('exit', (code, signal) =>
          code === 0 ? resolve() : reject(new Error(`${label} failed (${signal ?? `exit ${code}`})`)),
        );
      });
    }
  }
  await Promise.all(Array.from({ length: Math.min(jobs, commands.length) }, worker));
}

async function build(cxx, withDriver) {
  const target = readBindingGyp();
  const sources = target.sources;
  const flagsFromGyp = (target.cflags_cc || []).filter((flag) => !/^-O/.test(flag));
  const addonApiInclude = require('node-addon-api').include_dir;
  const includes = [
    `-I${path.isAbsolute(addonApiInclude) ? addonApiInclude : path.join(root, addonApiInclude)}`,
    `-I${nodeIncludeDir()}`,
  ];
  const defines = [...(target.defines || []), 'BUILDING_NODE_EXTENSION', 'NODE_GYP_MODULE_NAME=iaflow'].map(
    (define) => `-D${define}`,
  );
  // -fexceptions: binding.gyp removes node-gyp's -fno-exceptions the same way (cflags_cc!).
  const compileFlags = [
    ...flagsFromGyp,
    ...optimizeFlags,
    ...sanitizeFlags,
    ...libraryChecks,
    '-fexceptions',
    '-fPIC',
    '-pthread',
  ];
  const signature = JSON.stringify({ cxx, compileFlags, includes, defines });

  fs.mkdirSync(objDir, { recursive: true });
  fs.mkdirSync(addonDir, { recursive: true });
  // A change of compiler or flags rebuilds everything; otherwise an object is rebuilt when its
  // source or any header of native/ is newer.
  const signatureFile = path.join(objDir, 'flags.json');
  const sameFlags = fs.existsSync(signatureFile) && fs.readFileSync(signatureFile, 'utf8') === signature;
  const headers = headersUnder(path.join(root, "native"));
  const headersMtime = newestMtime(headers);

  const objectOf = (source) => path.join(objDir, source.replace(/[\\/]/g, '_').replace(/\.cc$/, '.o'));
  const stale = (source, object) =>
    !sameFlags ||
    !fs.existsSync(object) ||
    fs.statSync(object).mtimeMs < Math.max(headersMtime, fs.statSync(path.join(root, source)).mtimeMs);
  const allSources = withDriver ? [...sources, path.relative(root, driverSource)] : sources;
  const commands = allSources
    .filter((source) => stale(source, objectOf(source)))
    .map((source) => ({
      program: cxx,
      args: [...compileFlags, ...defines, ...includes, '-c', path.join(root, source), '-o', objectOf(source)],
      label: `compile ${source}`,
      source,
    }));
  const started = Date.now();
  await runAll(commands, Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length));
  fs.writeFileSync(signatureFile, signature);

  const objects = sources.map(objectOf);
  const link = [];
  const compiled = new Set(commands.map((command) => command.source));
  if (sources.some((source) => compiled.has(source)) || !fs.existsSync(addonPath)) {
    link.push({
      program: cxx,
      args: ['-shared', ...sanitizeFlags, '-pthread', '-o', addonPath, ...objects, '-ldl'],
      label: `link ${path.relative(root, addonPath)}`,
    });
  }
  if (withDriver && (commands.length > 0 || !fs.existsSync(driverPath))) {
    // (any compiled object: the driver links the core's objects too)
    // The driver links the core alone: every source but the Node binding.
    const coreObjects = sources.filter((source) => !/addon\.cc$/.test(source)).map(objectOf);
    link.push({
      program: cxx,
      // -ldl: the core's loadBackendLibrary uses dlopen (in libc itself from glibc 2.34 on).
      args: [...sanitizeFlags, '-pthread', '-o', driverPath, objectOf(path.relative(root, driverSource)), ...coreObjects, '-ldl'],
      label: `link ${path.relative(root, driverPath)}`,
    });
  }
  await runAll(link, 2);
  log(`build: ${commands.length} of ${allSources.length} sources compiled in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function sanitizerEnvironment(cxx, detectLeaks) {
  const asan = compilerRuntime(cxx, 'libasan.so');
  const ubsan = compilerRuntime(cxx, 'libubsan.so');
  const logPath = path.join(reportDir, 'report');
  const asanOptions = [
    `detect_leaks=${detectLeaks ? 1 : 0}`,
    'halt_on_error=1',
    // Huge requests fail as they would under glibc (new throws std::bad_alloc), which the addon
    // turns into a RangeError; ASan would otherwise report allocation-size-too-big and stop.
    'allocator_may_return_null=1',
    'check_initialization_order=1',
    // A smaller quarantine than the default 256 MB keeps the RSS bounds of test/backend.test.ts
    // meaningful (they add this figure); use-after-free within the last 64 MB freed is still caught.
    'quarantine_size_mb=64',
    'strict_string_checks=1',
    `log_path=${logPath}`,
  ];
  const ubsanOptions = ['halt_on_error=1', 'print_stacktrace=1', `log_path=${logPath}`];
  // Options the caller set come last, so they win.
  const env = { ...process.env };
  env.ASAN_OPTIONS = [...asanOptions, process.env.ASAN_OPTIONS].filter(Boolean).join(':');
  env.UBSAN_OPTIONS = [...ubsanOptions, process.env.UBSAN_OPTIONS].filter(Boolean).join(':');
  return { env, preload: [asan, ubsan] };
}

function collectReports() {
  if (!fs.existsSync(reportDir)) return [];
  return fs.readdirSync(reportDir).map((name) => path.join(reportDir, name));
}

function printReports(reports) {
  for (const file of reports) {
    process.stderr.write(`\n===== ${path.relative(root, file)} =====\n${fs.readFileSync(file, 'utf8')}`);
  }
}

// Spawns a node that loads the package's addon the way src/native.ts does (node-gyp-build on the
// package root) and reports which file it loaded and whether the ASan runtime is in the process.
function checkAddonIsSanitized(env) {
  const probe = `
    const resolved = require('node-gyp-build').resolve(${JSON.stringify(root)});
    const addon = require(resolved);
    const maps = require('node:fs').readFileSync('/proc/self/maps', 'utf8');
    console.log(JSON.stringify({
      resolved,
      mapped: maps.includes(resolved),
      asanRuntime: /libasan\\.so/.test(maps),
      backends: addon.backends().map((b) => b.name),
    }));`;
  const result = spawnSync(process.execPath, ['-e', probe], { cwd: root, env, encoding: 'utf8' });
  if (result.status !== 0) fail(`the sanitized addon does not load:\n${result.stderr}`);
  const seen = JSON.parse(result.stdout.trim().split('\n').pop());
  if (seen.resolved !== addonPath || !seen.mapped) {
    fail(`node-gyp-build loaded ${seen.resolved}, not the sanitized ${addonPath}`);
  }
  if (!seen.asanRuntime) fail('the ASan runtime is not in the node process');
  log(`node-gyp-build loads ${path.relative(root, seen.resolved)} (ASan runtime mapped; backends ${seen.backends.join(', ')})`);
}

// How much longer tests may take under the sanitizers than jest.config.js and the suites allow.
const SANITIZER_TIME_SCALE = 5;

function runJest(env, jestArgs) {
  // jest's package exports hide bin/jest.js from require.resolve; its package.json is exported.
  const jestPackage = require.resolve('jest/package.json', { paths: [root] });
  const jest = path.join(path.dirname(jestPackage), require(jestPackage).bin.jest ?? 'bin/jest.js');
  log(`jest ${jestArgs.join(' ')}`);
  const timeout = `--testTimeout=${60_000 * SANITIZER_TIME_SCALE}`;
  const result = spawnSync(process.execPath, [jest, '--ci', timeout, ...jestArgs], { cwd: root, env, stdio: 'inherit' });
  // A sanitizer that stops jest's own process leaves no jest summary: say how it ended.
  if (result.status !== 0) log(`jest ended with ${result.signal ?? `exit status ${result.status}`}`);
  return result.status === 0;
}

async function main() {
  if (process.platform !== 'linux') fail('runs on Linux only (GCC with libasan and libubsan)');
  const options = parseArguments(process.argv.slice(2));
  const cxx = process.env.CXX || 'g++';
  const version = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) fail(`no C++ compiler (${cxx})`);
  if (/clang/i.test(version.stdout)) fail(`${cxx} is Clang; this script uses GCC's sanitizer runtimes (set CXX=g++)`);

  const started = Date.now();
  await build(cxx, options.leakDriver);
  if (options.buildOnly) return;

  fs.rmSync(reportDir, { recursive: true, force: true });
  fs.mkdirSync(reportDir, { recursive: true });
  let passed = true;

  if (options.jest) {
    const { env, preload } = sanitizerEnvironment(cxx, false);
    env.LD_PRELOAD = [...preload, process.env.LD_PRELOAD].filter(Boolean).join(' ');
    env.IAFLOW_PREBUILD = outDir;
    delete env.PREBUILDS_ONLY; // it would make node-gyp-build skip build/Release folders
    // The sanitized addon runs several times slower: tests that train to a statistical bar
    // (the NPE, amortised-VI and distillation tests) would pass their time limits on a 2-core
    // AVX2 machine. The suites multiply their explicit limits by this; jest's default gets it too.
    env.IAFLOW_TEST_TIME_SCALE = String(SANITIZER_TIME_SCALE);
    checkAddonIsSanitized(env);
    const jestStarted = Date.now();
    passed = runJest(env, options.jestArgs) && passed;
    log(`jest under ASan+UBSan: ${((Date.now() - jestStarted) / 1000).toFixed(0)} s`);
  }

  if (options.leakDriver) {
    const { env } = sanitizerEnvironment(cxx, true);
    log(`${path.relative(root, driverPath)} (LeakSanitizer on)`);
    const driverStarted = Date.now();
    const result = spawnSync(driverPath, [], { cwd: root, env, stdio: 'inherit' });
    if (result.status !== 0) {
      log(`leak driver failed (${result.signal ?? `exit ${result.status}`})`);
      passed = false;
    }
    log(`leak driver: ${((Date.now() - driverStarted) / 1000).toFixed(0)} s`);
  }

  const reports = collectReports();
  printReports(reports);
  if (reports.length > 0) {
    log(`${reports.length} sanitizer report(s), listed above`);
    passed = false;
  }
  log(`${passed ? 'passed' : 'FAILED'} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  process.exit(passed ? 0 : 1);
}

main().catch((error) => fail(error.stack || String(error)));
