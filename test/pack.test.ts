// The package as a user gets it. In a scratch copy of this repository (so the working tree's
// build/, prebuilds/ and dist/ are never touched, and jest's other suites keep their addon),
// `npm run prebuild` puts the addon under prebuilds/ and `npm pack` makes the tarball. The
// tarball is installed into a fresh folder with `npm install --offline`: the folder's package.json
// names iaflow alone, and its package-lock.json pins iaflow's runtime dependencies (fastify and
// its tree included, nested copies where this repository's node_modules nests them) to tarballs
// packed from this repository's node_modules, so everything arrives as iaflow's dependencies,
// with no network. (npm's cache cannot be relied on for those: after a lockfile install it holds
// their tarballs but not the registry metadata that installing a new package needs, so a fresh
// machine fails with ENOTCACHED.) The install runs with a PATH holding only node, sh and logging
// stubs named g++, gcc, cc, c++, clang, make, cmake, ninja, nvcc, python3...: it must call none of
// them. Then, in that folder, a flow samples through both `require('iaflow')` and
// `import('iaflow')`, the addon must come from prebuilds/, loading the library loads no fastify
// module, `npx iaflow serve` answers /health and /sample, and tsc type-checks a consumer of both
// entry points. Prints the tarball's size and what fastify's tree adds to node_modules.
import { spawn, spawnSync, SpawnSyncOptions } from 'node:child_process';
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, sep } from 'node:path';
import { createFlow, iaf, maf, reverse, saveFlow } from '../src';

const root = join(__dirname, '..');
const platformArch = `${process.platform}-${process.arch}`;
const STUBS = ['g++', 'gcc', 'cc', 'c++', 'clang', 'clang++', 'make', 'gmake', 'cmake', 'ninja', 'nvcc', 'python', 'python3', 'cl', 'link'];

// Shell stubs and a PATH without system directories need a POSIX system; Windows is checked by
// the smoke job of .github/workflows/prebuild.yml instead.
const supported = process.platform !== 'win32';
if (!supported) console.warn(`SKIPPED test/pack.test.ts: it needs a POSIX shell, and this is ${process.platform}`);

/** npm itself: the one running this test (npm test / npx) or else the one on PATH. */
const npmCli = process.env.npm_execpath && /npm-cli\.js$/.test(process.env.npm_execpath) ? process.env.npm_execpath : undefined;

/** The environment minus the variables npm sets for the script running this test: a nested npm
 * must not inherit this project's prefix, lifecycle or package settings. Where npm keeps its
 * cache and config, and where Node's headers are (nodedir), stay as they are. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_cache', 'npm_config_userconfig', 'npm_config_globalconfig', 'npm_config_nodedir', 'npm_config_cafile']);
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if ((/^npm_/i.test(key) && !keep.has(key.toLowerCase())) || key === 'INIT_CWD') continue;
    env[key] = value;
  }
  return { ...env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...extra };
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[], options: SpawnSyncOptions): Run {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
  if (result.error) throw result.error;
  return { status: result.status, stdout: String(result.stdout), stderr: String(result.stderr) };
}

function npm(args: string[], options: SpawnSyncOptions): Run {
  return npmCli ? run(process.execPath, [npmCli, ...args], options) : run('npm', args, options);
}

function expectSuccess(what: string, result: Run): void {
  if (result.status !== 0) {
    throw new Error(`${what} failed (exit ${result.status})\n--- stdout\n${result.stdout.slice(-6000)}\n--- stderr\n${result.stderr.slice(-6000)}`);
  }
}

interface Manifest {
  name: string;
  version: string;
  license?: string;
  bin?: string | Record<string, string>;
  engines?: Record<string, string>;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

interface Installed {
  /** Where npm puts it, relative to the project: node_modules/ajv/node_modules/fast-uri. */
  location: string;
  manifest: Manifest;
}

/**
 * The packages `require` reaches from the root package's runtime dependencies, walked through
 * root's node_modules as Node resolves them (a package's own node_modules first, then its
 * parents'), so a nested copy (two versions of one package) keeps its place.
 */
function runtimeTree(rootDir: string): Installed[] {
  const found = new Map<string, Installed>();
  const visit = (from: string, manifest: Manifest): void => {
    for (const name of Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies })) {
      // Node's lookup: <dir>/node_modules/<name> for `from` and each folder above it up to
      // rootDir, skipping folders that are themselves named node_modules.
      let location: string | undefined;
      for (let dir = from; location === undefined; dir = dirname(dir)) {
        const candidate = join(dir, 'node_modules', name);
        if (basename(dir) !== 'node_modules' && existsSync(join(candidate, 'package.json'))) location = relative(rootDir, candidate).split(sep).join('/');
        if (dir === rootDir || dirname(dir) === dir) break;
      }
      if (location === undefined) {
        if (manifest.optionalDependencies?.[name] !== undefined) continue;
        throw new Error(`${manifest.name} needs ${name}, which is not installed under ${rootDir}: run npm install`);
      }
      if (found.has(location)) continue;
      const installed: Installed = { location, manifest: JSON.parse(readFileSync(join(rootDir, location, 'package.json'), 'utf8')) as Manifest };
      found.set(location, installed);
      visit(join(rootDir, location), installed.manifest);
    }
  };
  visit(rootDir, JSON.parse(readFileSync(join(rootDir, 'package.json'), 'utf8')) as Manifest);
  return [...found.values()].sort((a, b) => a.location.localeCompare(b.location));
}

/** Bytes and files under a folder, links not followed. */
function folderSize(dir: string): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      const inner = folderSize(path);
      bytes += inner.bytes;
      files += inner.files;
    } else if (entry.isFile()) {
      bytes += lstatSync(path).size;
      files += 1;
    }
  }
  return { bytes, files };
}

interface PackedFile {
  path: string;
  size: number;
}
interface PackResult {
  filename: string;
  size: number;
  unpackedSize: number;
  files: PackedFile[];
}

let work = '';
let packed: PackResult;
let tarball = '';
let runtime: Installed[] = [];
/** location -> tarball, for each package of `runtime`. */
let dependencyTarballs = new Map<string, string>();
let app = '';
let stubLog = '';
let installOutput = '';
let appEnv: NodeJS.ProcessEnv = {};

/**
 * A project folder whose package.json depends on iaflow (the tarball) alone and whose
 * package-lock.json pins every package of iaflow's runtime tree to its tarball under deps/, at
 * the place it has in this repository's node_modules: `npm install --offline` then needs no
 * registry, and fastify comes in as iaflow's dependency, as it would from the registry.
 */
function makeApp(dir: string, name: string): string {
  mkdirSync(dir);
  const iaflowManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as Manifest;
  const file = (path: string): string => `file:${relative(dir, path).split(sep).join('/')}`;
  const entry = (manifest: Manifest, resolved: string): Record<string, unknown> => {
    const out: Record<string, unknown> = { version: manifest.version, resolved };
    for (const key of ['license', 'dependencies', 'optionalDependencies', 'peerDependencies', 'peerDependenciesMeta', 'engines'] as const) {
      if (manifest[key] !== undefined) out[key] = manifest[key];
    }
    // npm links node_modules/.bin from the lockfile's bin (node-gyp-build's is iaflow's install script).
    if (typeof manifest.bin === 'string') out.bin = { [manifest.name.replace(/^@[^/]+\//, '')]: manifest.bin };
    else if (manifest.bin !== undefined) out.bin = manifest.bin;
    return out;
  };
  const packages: Record<string, unknown> = {
    '': { name, version: '1.0.0', dependencies: { iaflow: file(tarball) } },
    'node_modules/iaflow': { ...entry(iaflowManifest, file(tarball)), hasInstallScript: true },
  };
  for (const r of runtime) packages[r.location] = entry(r.manifest, file(dependencyTarballs.get(r.location)!));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true, dependencies: { iaflow: file(tarball) } }, null, 2));
  writeFileSync(join(dir, 'package-lock.json'), JSON.stringify({ name, version: '1.0.0', lockfileVersion: 3, requires: true, packages }, null, 2));
  return dir;
}

const describePack = supported ? describe : describe.skip;

describePack('the packed package, installed offline with no compiler on PATH', () => {
  beforeAll(() => {
    const timings: string[] = [];
    let started = Date.now();
    const lap = (what: string): void => {
      timings.push(`${what} ${((Date.now() - started) / 1000).toFixed(1)} s`);
      started = Date.now();
    };
    work = mkdtempSync(join(tmpdir(), 'iaflow-pack-'));

    // 1. A scratch copy of the repository: the sources as committed or edited, no build outputs.
    const stage = join(work, 'stage');
    const skip = new Set(['node_modules', 'build', 'prebuilds', 'dist', '.git', 'coverage', 'out']);
    cpSync(root, stage, {
      recursive: true,
      filter: (source) => {
        const rel = relative(root, source);
        if (rel === '') return true;
        const top = rel.split(sep)[0];
        return !skip.has(top) && !rel.endsWith('.tgz');
      },
    });
    symlinkSync(join(root, 'node_modules'), join(stage, 'node_modules'), 'dir');
    const stageEnv = cleanEnv();

    // 2. npm run prebuild, npm pack.
    lap('copy');
    expectSuccess('npm run prebuild', npm(['run', 'prebuild'], { cwd: stage, env: stageEnv }));
    lap('npm run prebuild');
    expect(existsSync(join(stage, 'prebuilds', platformArch, 'iaflow.node'))).toBe(true);
    const pack = npm(['pack', '--json', '--pack-destination', work], { cwd: stage, env: stageEnv });
    expectSuccess('npm pack', pack);
    lap('npm pack');
    // The prepare script's own output comes first on stdout; the JSON report is the rest.
    const jsonStart = pack.stdout.search(/^\[/m);
    [packed] = JSON.parse(pack.stdout.slice(jsonStart)) as PackResult[];
    tarball = join(work, packed.filename);

    // The runtime dependencies and theirs, as tarballs made from the installed copies (no network).
    runtime = runtimeTree(root);
    expect(runtime.map((r) => r.location)).toEqual(expect.arrayContaining(['node_modules/fastify', 'node_modules/node-gyp-build', 'node_modules/node-addon-api']));
    const deps = join(work, 'deps');
    mkdirSync(deps);
    const depPack = npm(['pack', '--json', '--ignore-scripts', '--pack-destination', deps, ...runtime.map((r) => join(root, r.location))], { cwd: work, env: stageEnv });
    expectSuccess('npm pack (dependencies)', depPack);
    const byId = new Map((JSON.parse(depPack.stdout.slice(depPack.stdout.search(/^\[/m))) as (PackResult & Manifest)[]).map((p) => [`${p.name}@${p.version}`, join(deps, p.filename)]));
    dependencyTarballs = new Map(runtime.map((r) => [r.location, byId.get(`${r.manifest.name}@${r.manifest.version}`)!]));
    expect([...dependencyTarballs.values()].filter((t) => t === undefined || !existsSync(t))).toEqual([]);
    lap(`npm pack (${runtime.length} dependencies)`);

    // 3. Stubs for every compiler and build tool, first on a PATH that otherwise holds only node
    // and sh (npm runs install scripts with sh).
    const stubs = join(work, 'stubs');
    const nodeDir = join(work, 'node-and-sh');
    mkdirSync(stubs);
    mkdirSync(nodeDir);
    stubLog = join(work, 'compiler-calls.log');
    for (const name of STUBS) {
      const stub = join(stubs, name);
      writeFileSync(stub, `#!/bin/sh\necho "${name} $*" >> '${stubLog}'\nexit 1\n`);
      chmodSync(stub, 0o755);
    }
    symlinkSync(process.execPath, join(nodeDir, 'node'));
    symlinkSync('/bin/sh', join(nodeDir, 'sh'));
    appEnv = cleanEnv({
      PATH: `${stubs}:${nodeDir}`,
      CC: join(stubs, 'cc'),
      CXX: join(stubs, 'c++'),
      // --offline already forbids the network; a dead proxy makes any attempt fail loudly too.
      npm_config_proxy: 'http://127.0.0.1:9',
      npm_config_https_proxy: 'http://127.0.0.1:9',
    });

    // 4. A fresh folder that depends on iaflow alone; install it, offline.
    app = join(work, 'app');
    const install = npm(['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts'], { cwd: makeApp(app, 'iaflow-pack-test'), env: appEnv });
    installOutput = `${install.stdout}\n${install.stderr}`;
    expectSuccess('npm install --offline (iaflow from its tarball)', install);
    lap('npm install --offline');
    const own = new Set(['iaflow', 'node-addon-api', 'node-gyp-build', '.bin', '.package-lock.json']);
    const added = readdirSync(join(app, 'node_modules'))
      .filter((name) => !own.has(name))
      .flatMap((name) => (name.startsWith('@') ? readdirSync(join(app, 'node_modules', name)).map((inner) => join(name, inner)) : [name]))
      .map((name) => folderSize(join(app, 'node_modules', name)))
      .reduce((sum, size) => ({ bytes: sum.bytes + size.bytes, files: sum.files + size.files }), { bytes: 0, files: 0 });
    console.log(
      `iaflow tarball: ${packed.filename}, ${packed.size.toLocaleString('en')} bytes packed ` +
        `(${(packed.size / 1024).toFixed(1)} KiB), ${packed.unpackedSize.toLocaleString('en')} bytes unpacked, ` +
        `${packed.files.length} files (${timings.join(', ')}); fastify and its dependencies add ` +
        `${runtime.length - 2} packages, ${(added.bytes / 2 ** 20).toFixed(1)} MiB in ${added.files.toLocaleString('en')} files to node_modules`,
    );
  }, 300_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('the tarball holds the runtime files only: no tests, benchmarks, sources of the build or build leftovers', () => {
    const paths = packed.files.map((f) => f.path).sort();
    const allowed = [
      /^package\.json$/,
      /^README\.md$/,
      /^LICEN[CS]E(\.\w+)?$/,
      /^dist\/[\w-]+\.(js|d\.ts)$/,
      /^dist\/(index|server)\.(mjs|d\.mts)$/,
      /^prebuilds\/[\w-]+\/iaflow(\.[\w-]+)*\.node$/,
      /^native\/[\w/-]+\.(cc|h|cu|cuh)$/,
      /^binding\.gyp$/,
      /^CMakeLists\.txt$/,
    ];
    expect(paths.filter((p) => !allowed.some((pattern) => pattern.test(p)))).toEqual([]);
    for (const required of ['dist/index.js', 'dist/index.d.ts', 'dist/index.mjs', 'dist/index.d.mts', 'dist/server.mjs', 'dist/server.d.mts', 'dist/npy.js', 'binding.gyp', 'native/addon.cc', `prebuilds/${platformArch}/iaflow.node`]) {
      expect(paths).toContain(required);
    }
    expect(paths.filter((p) => /^(test|bench|examples|scripts|src|build|\.ci|\.github)\//.test(p) || p.endsWith('.map') || p.endsWith('.o'))).toEqual([]);
    // No test or benchmark folder at any depth either (say, a future native/tests/).
    expect(paths.filter((p) => /(^|\/)(tests?|bench(marks?)?|examples?|fixtures)\//.test(p))).toEqual([]);
  });

  test('installing compiled nothing: no compiler or build tool was called, no build/ folder exists', () => {
    const calls = existsSync(stubLog) ? readFileSync(stubLog, 'utf8') : '';
    expect(calls).toBe('');
    const installed = join(app, 'node_modules', 'iaflow');
    expect(existsSync(join(installed, 'package.json'))).toBe(true);
    expect(existsSync(join(installed, 'build'))).toBe(false);
    expect(installOutput).not.toMatch(/gyp (info|ERR)/);
  });

  test('control: the stubs do catch a compile (forcing a build from source reaches them and fails)', () => {
    const fromSource = makeApp(join(work, 'app-from-source'), 'iaflow-from-source');
    const install = npm(['install', '--offline', '--no-audit', '--no-fund'], {
      cwd: fromSource,
      env: { ...appEnv, npm_config_build_from_source: 'true' },
    });
    expect(install.status).not.toBe(0);
    expect(readFileSync(stubLog, 'utf8')).toMatch(/^(python3?|make|g\+\+|c\+\+|cc) /m);
    rmSync(stubLog, { force: true });
  });

  test('a flow samples through require() and import(), with the addon from prebuilds/', () => {
    // The same flow and seed in this process (the repository's own build) give the reference.
    const layers = [iaf({ hidden: [32, 32] }), reverse(), maf({ hidden: [16] })];
    const reference = Array.from(createFlow({ dim: 3, seed: 11, layers }).sampleSync(4, { seed: 5 }));

    writeFileSync(
      join(app, 'use.cjs'),
      `const path = require('node:path');
// fastify is installed (a dependency of iaflow), but only the serve command loads it.
const fastifyModules = () => Object.keys(require.cache).filter((file) => /[\\\\/]node_modules[\\\\/](fastify|avvio|pino|find-my-way|light-my-request)[\\\\/]/.test(file));
const iaflow = require('iaflow');
const fastifyAfterRequire = fastifyModules();
const fastifyInstalled = require.resolve('fastify', { paths: [path.dirname(require.resolve('iaflow/package.json'))] });
const addon = require('node-gyp-build').path(path.dirname(require.resolve('iaflow/package.json')));
(async () => {
  const esm = await import('iaflow');
  const make = (lib) => lib.createFlow({ dim: 3, seed: 11, layers: [lib.iaf({ hidden: [32, 32] }), lib.reverse(), lib.maf({ hidden: [16] })] });
  const viaRequire = Array.from(await make(iaflow).sample(4, { seed: 5 }));
  const viaImport = Array.from(await make(esm).sample(4, { seed: 5 }));
  await iaflow.writeNpy(path.join(__dirname, 'x.npy'), await make(iaflow).sample(4, { seed: 5 }), [4, 3]);
  const cjsKeys = Object.keys(iaflow).filter((k) => k !== '__esModule').sort();
  const esmKeys = Object.keys(esm).filter((k) => k !== 'default' && k !== 'module.exports').sort();
  // iaflow/server does not load fastify either: only serveModel (the serve command) does.
  const server = require('iaflow/server');
  const serverEsm = await import('iaflow/server');
  const serverKinds = [typeof server.iaflowPlugin, typeof server.sampleSharded, typeof serverEsm.iaflowPlugin, typeof serverEsm.sampleSharded];
  const fastifyAfterAll = fastifyModules();
  // The check itself: the same filter does see fastify once it is loaded.
  require(fastifyInstalled);
  const fastifyControl = fastifyModules().length;
  console.log(JSON.stringify({ addon, viaRequire, viaImport, cjsKeys, esmKeys, sameClass: esm.Flow === iaflow.Flow, serverKinds, fastifyAfterRequire, fastifyAfterAll, fastifyInstalled, fastifyControl }));
})().catch((e) => { console.error(e); process.exit(1); });
`,
    );
    writeFileSync(
      join(app, 'use.mjs'),
      `import { createFlow, iaf, maf, reverse, readNpy, Flow } from 'iaflow';
const flow = createFlow({ dim: 3, seed: 11, layers: [iaf({ hidden: [32, 32] }), reverse(), maf({ hidden: [16] })] });
const sample = Array.from(flow.sampleSync(4, { seed: 5 }));
const fromNpy = await readNpy(new URL('./x.npy', import.meta.url).pathname);
console.log(JSON.stringify({ sample, isFlow: flow instanceof Flow, npy: Array.from(fromNpy.data), npyShape: fromNpy.shape }));
`,
    );
    const cjs = run(process.execPath, ['use.cjs'], { cwd: app, env: appEnv });
    expectSuccess('node use.cjs', cjs);
    const fromCjs = JSON.parse(cjs.stdout) as {
      addon: string;
      viaRequire: number[];
      viaImport: number[];
      cjsKeys: string[];
      esmKeys: string[];
      sameClass: boolean;
      serverKinds: string[];
      fastifyAfterRequire: string[];
      fastifyAfterAll: string[];
      fastifyInstalled: string;
      fastifyControl: number;
    };
    const esm = run(process.execPath, ['use.mjs'], { cwd: app, env: appEnv });
    expectSuccess('node use.mjs', esm);
    const fromEsm = JSON.parse(esm.stdout) as { sample: number[]; isFlow: boolean; npy: number[]; npyShape: number[] };

    expect(relative(join(app, 'node_modules', 'iaflow'), fromCjs.addon).split(sep)).toEqual(['prebuilds', platformArch, 'iaflow.node']);
    expect(fromCjs.viaRequire).toEqual(reference);
    expect(fromCjs.viaImport).toEqual(reference);
    expect(fromEsm.sample).toEqual(reference);
    expect(fromEsm.npy).toEqual(reference);
    expect(fromEsm.npyShape).toEqual([4, 3]);
    expect(fromEsm.isFlow).toBe(true);
    expect(fromCjs.sameClass).toBe(true);
    expect(fromCjs.esmKeys).toEqual(fromCjs.cjsKeys);
    expect(fromCjs.cjsKeys).toEqual(expect.arrayContaining(['createFlow', 'loadFlow', 'readNpy', 'writeNpy', 'Flow']));
    expect(fromCjs.serverKinds).toEqual(['function', 'function', 'function', 'function']);
    expect(fromCjs.fastifyAfterRequire).toEqual([]);
    expect(fromCjs.fastifyAfterAll).toEqual([]);
    expect(relative(app, fromCjs.fastifyInstalled).split(sep).slice(0, 2)).toEqual(['node_modules', 'fastify']);
    expect(fromCjs.fastifyControl).toBeGreaterThan(0);
  });

  test('fastify is a dependency of the installed package (not a peer), and `npx iaflow serve` answers /health and /sample with no other install', async () => {
    const installedManifest = JSON.parse(readFileSync(join(app, 'node_modules', 'iaflow', 'package.json'), 'utf8')) as Manifest & { devDependencies?: unknown };
    const ownManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as Manifest & { devDependencies: Record<string, string> };
    expect(installedManifest.dependencies?.fastify).toBe(ownManifest.dependencies?.fastify);
    expect(installedManifest.peerDependencies?.fastify).toBeUndefined();
    expect(ownManifest.devDependencies.fastify).toBeUndefined();
    // The app asked for iaflow alone; fastify came with it.
    expect(Object.keys((JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')) as Manifest).dependencies ?? {})).toEqual(['iaflow']);

    const layers = [iaf({ hidden: [16, 16] }), reverse(), maf({ hidden: [8] })];
    const flow = createFlow({ dim: 3, seed: 21, layers });
    await saveFlow(flow, join(app, 'model.safetensors'));
    const rows = await flow.sample(1000, { seed: 9, firstRow: 17 });
    const expected = Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength);

    // npx is `npm exec`: run it through the npm running this test, on the stubbed PATH (else the
    // installed bin, which is what npx runs). In a process group of its own: npm exec does not
    // pass SIGTERM on to the command, so the group gets it, and the server is the one to handle it.
    const command = npmCli ? [process.execPath, npmCli, 'exec', '--offline', '--', 'iaflow'] : [join(app, 'node_modules', '.bin', 'iaflow')];
    const child = spawn(command[0], [...command.slice(1), 'serve', 'model.safetensors', '--port', '0', '--threads', '1'], {
      cwd: app,
      env: appEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let log = '';
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    // Every process of the group (npm and the server) has closed its ends of the pipes.
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const signalGroup = (signal: NodeJS.Signals): void => {
      try {
        process.kill(-child.pid!, signal);
      } catch {
        // the group is gone already
      }
    };
    try {
      const base = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`iaflow serve did not listen within 30 s: ${log}`)), 30_000);
        const onData = (data: Buffer): void => {
          log += data.toString();
          const match = / on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(log);
          if (match) {
            clearTimeout(timer);
            resolve(match[1]);
          }
        };
        child.stdout!.on('data', onData);
        child.stderr!.on('data', onData);
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`iaflow serve exited (${code}) before listening: ${log}`));
        });
      });
      const health = await fetch(`${base}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ status: 'ok' });
      const sample = await fetch(`${base}/sample`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ n: 1000, seed: 9, firstRow: 17, format: 'f32' }),
      });
      expect(sample.status).toBe(200);
      expect(sample.headers.get('content-type')).toMatch(/^application\/octet-stream/);
      expect(Buffer.from(await sample.arrayBuffer()).equals(expected)).toBe(true);
    } finally {
      signalGroup('SIGTERM');
      const killer = setTimeout(() => signalGroup('SIGKILL'), 20_000);
      await closed;
      clearTimeout(killer);
      flow.dispose();
    }
    // The server shut down as on SIGTERM: it finished and said so.
    expect(log).toMatch(/iaflow: shutting down[^]*iaflow: stopped\n/);
  }, 60_000);

  test('TypeScript consumers of the installed package: import and require both typed, misspelt options rejected', () => {
    const consumer = (kind: 'import' | 'require'): string =>
      `${kind === 'import' ? "import { createFlow, iaf, readNpy, type NpyArray } from 'iaflow';" : "import iaflow = require('iaflow');\nconst { createFlow, iaf, readNpy } = iaflow;\ntype NpyArray = iaflow.NpyArray;"}
export async function f(): Promise<number> {
  const flow = createFlow({ dim: 2, layers: [iaf({ hidden: [8] })] });
  const x: Float32Array = await flow.sample(3, { seed: 1 });
  const npy: NpyArray = await readNpy('x.npy');
  iaf({ hiden: [8] }); // misspelt on purpose
  return x.length + npy.shape.length;
}
`;
    writeFileSync(join(app, 'consumer.mts'), consumer('import'));
    writeFileSync(join(app, 'consumer.cts'), consumer('require'));
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'node16',
          moduleResolution: 'node16',
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          typeRoots: [join(root, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['consumer.mts', 'consumer.cts'],
      }),
    );
    const tsc = run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json', '--pretty', 'false', '--traceResolution'], { cwd: app, env: appEnv });
    const errors = tsc.stdout.split('\n').filter((line) => /error TS\d+/.test(line));
    expect(errors.map((line) => line.replace(/\(\d+,\d+\).*?(TS\d+).*/, ' $1')).sort()).toEqual(['consumer.cts TS2561', 'consumer.mts TS2561']);
    // Each entry point resolved to its own declarations through the exports map.
    expect(tsc.stdout).toMatch(/Module name 'iaflow' was successfully resolved to '[^']*node_modules\/iaflow\/dist\/index\.d\.mts'/);
    expect(tsc.stdout).toMatch(/Module name 'iaflow' was successfully resolved to '[^']*node_modules\/iaflow\/dist\/index\.d\.ts'/);
  });

  test('the tarball is small', () => {
    expect(statSync(tarball).size).toBe(packed.size);
    expect(packed.size).toBeLessThan(2 * 1024 * 1024);
    expect(basename(dirname(tarball))).toBe(basename(work));
  });
});
