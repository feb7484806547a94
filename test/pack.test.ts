// The package as a user gets it. In a scratch copy of this repository (so the working tree's
// build/, prebuilds/ and dist/ are never touched, and jest's other suites keep their addon),
// `npm run prebuild` puts the addon under prebuilds/ and `npm pack` makes the tarball. The
// tarball is installed into a fresh folder with `npm install --offline`, next to tarballs of its
// two runtime dependencies packed from this repository's node_modules. (npm's cache cannot be
// relied on for those: after a lockfile install it holds their tarballs but not the registry
// metadata that installing a new package needs, so a fresh machine fails with ENOTCACHED.) The
// install runs with a PATH holding only node, sh and logging stubs named g++, gcc, cc, c++, clang,
// make, cmake, ninja, nvcc, python3...: it must call none of them. Then, in that folder, a flow
// samples through both `require('iaflow')` and `import('iaflow')`, the addon must come from
// prebuilds/, and tsc type-checks a consumer of both entry points. Prints the tarball's size.
import { spawnSync, SpawnSyncOptions } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, sep } from 'node:path';
import { createFlow, iaf, maf, reverse } from '../src';

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
let dependencyTarballs: string[] = [];
let app = '';
let stubLog = '';
let installOutput = '';
let appEnv: NodeJS.ProcessEnv = {};

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

    // The runtime dependencies, as tarballs made from the installed copies (no network).
    const dependencies = Object.keys((JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies);
    const depPack = npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work, ...dependencies.map((d) => join(root, 'node_modules', d))], { cwd: work, env: stageEnv });
    expectSuccess('npm pack (dependencies)', depPack);
    dependencyTarballs = (JSON.parse(depPack.stdout.slice(depPack.stdout.search(/^\[/m))) as PackResult[]).map((p) => join(work, p.filename));
    expect(dependencyTarballs.length).toBe(dependencies.length);

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

    // 4. A fresh folder; install the tarballs, offline.
    app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'iaflow-pack-test', version: '1.0.0', private: true }, null, 2));
    const install = npm(['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', tarball, ...dependencyTarballs], { cwd: app, env: appEnv });
    installOutput = `${install.stdout}\n${install.stderr}`;
    expectSuccess('npm install --offline <tarball>', install);
    lap('npm install --offline');
    console.log(
      `iaflow tarball: ${packed.filename}, ${packed.size.toLocaleString('en')} bytes packed ` +
        `(${(packed.size / 1024).toFixed(1)} KiB), ${packed.unpackedSize.toLocaleString('en')} bytes unpacked, ` +
        `${packed.files.length} files (${timings.join(', ')})`,
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
    const fromSource = join(work, 'app-from-source');
    mkdirSync(fromSource);
    writeFileSync(join(fromSource, 'package.json'), JSON.stringify({ name: 'iaflow-from-source', version: '1.0.0', private: true }));
    const install = npm(['install', '--offline', '--no-audit', '--no-fund', tarball, ...dependencyTarballs], {
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
const iaflow = require('iaflow');
const addon = require('node-gyp-build').path(path.dirname(require.resolve('iaflow/package.json')));
(async () => {
  const esm = await import('iaflow');
  const make = (lib) => lib.createFlow({ dim: 3, seed: 11, layers: [lib.iaf({ hidden: [32, 32] }), lib.reverse(), lib.maf({ hidden: [16] })] });
  const viaRequire = Array.from(await make(iaflow).sample(4, { seed: 5 }));
  const viaImport = Array.from(await make(esm).sample(4, { seed: 5 }));
  await iaflow.writeNpy(path.join(__dirname, 'x.npy'), await make(iaflow).sample(4, { seed: 5 }), [4, 3]);
  const cjsKeys = Object.keys(iaflow).filter((k) => k !== '__esModule').sort();
  const esmKeys = Object.keys(esm).filter((k) => k !== 'default' && k !== 'module.exports').sort();
  // iaflow/server loads without fastify (an optional peer, not installed here): only serveModel needs it.
  const server = require('iaflow/server');
  const serverEsm = await import('iaflow/server');
  const serverKinds = [typeof server.iaflowPlugin, typeof server.sampleSharded, typeof serverEsm.iaflowPlugin, typeof serverEsm.sampleSharded];
  const noFastify = await server.serveModel({ model: 'x.safetensors' }).then(() => 'served', (e) => e.message);
  console.log(JSON.stringify({ addon, viaRequire, viaImport, cjsKeys, esmKeys, sameClass: esm.Flow === iaflow.Flow, serverKinds, noFastify }));
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
      noFastify: string;
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
    expect(fromCjs.noFastify).toMatch(/iaflow serve needs the fastify package \(an optional peer dependency of iaflow\): npm install fastify@5/);
  });

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
