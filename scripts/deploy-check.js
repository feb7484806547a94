#!/usr/bin/env node
// The container check without Docker (`npm run test:deploy`): builds deploy/Dockerfile by running
// its own instructions on this machine, then starts the image's ENTRYPOINT and checks over HTTP
// that it serves the model it was built with.
//
//   1. deploy/Dockerfile is parsed (nothing of it is hard-coded here: an edited Dockerfile runs its
//      edited steps). FROM [AS], ARG, ENV, LABEL, WORKDIR, COPY [--from], RUN, USER, EXPOSE,
//      STOPSIGNAL, ENTRYPOINT and CMD are understood; any other instruction, flag or syntax is
//      refused with an error, so no step is ever skipped silently.
//   2. The build context is `git archive HEAD` (committed files only: no build/, dist/ or
//      node_modules/ from this checkout) plus a small model made with the library (dist/), passed
//      as --build-arg MODEL=...; deploy/Dockerfile.dockerignore (else the context's .dockerignore)
//      is applied to it as BuildKit does.
//   3. Every stage gets its own root directory under a fresh temp dir. The base image
//      (node:20-bookworm, node:20-bookworm-slim) is stood in for by this machine's own system (it
//      must be Debian 12 with Node 20): its /usr, /etc and /var are bind-mounted read-only into the
//      stage root, and everything else (/src, /app, /tmp, /root, /home, ...) is the stage's own.
//      Each RUN runs in `unshare -m -p -u --fork` (new mount, PID and hostname namespaces) chrooted
//      into the stage root, cwd = WORKDIR, as USER, with the image's environment, so the absolute
//      paths of the Dockerfile resolve inside the stage and a write to the base fails (read-only)
//      instead of touching this machine. For a -slim base the compilers, make, python3 and git are
//      hidden (not in the slim image), so a step that would compile there fails here too.
//   4. The last stage's ENTRYPOINT runs the same way, as PID 1 of its PID namespace, on the EXPOSEd
//      port (another one, said so, if that one is taken here); GET /health, GET /model and POST
//      /sample are checked (the rows must equal flow.sample(5, { seed: 1 }) of the same model file
//      computed in this process by the iaflow package installed in the image; this checkout's own
//      dist/ must agree too unless its sources have uncommitted changes, then that is a warning),
//      then the STOPSIGNAL is sent and the process must exit 0 within 5 s.
//
// Usage: node scripts/deploy-check.js [--keep] [--allow-skip] [--verbose] [--build-arg K=V]...
//          [--dockerfile PATH] [--ref REF] [--port N]
// Needs root (mount namespaces, chroot) and dist/ built (npm run build:ts, build:native). Exits 0
// with a final PASS line, 1 on any failure (naming the step). Without permission for `unshare -m`
// it fails, or with --allow-skip prints "skipped: ..." and exits 0.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const { spawn, spawnSync } = require('node:child_process');

const repo = path.join(__dirname, '..');
const started = Date.now();

// ---------------------------------------------------------------------------------------
// Command line

const USAGE = `Usage: node scripts/deploy-check.js [options]
  --build-arg K=V     a build argument, as docker build's (repeatable; default MODEL=deploy-check-model.safetensors)
  --dockerfile PATH   the Dockerfile (default deploy/Dockerfile)
  --ref REF           the commit whose files make the build context (default HEAD)
  --port N            the host port to serve on (default: the EXPOSEd port, or a free one if taken)
  --keep              keep the temp dir (stage roots, context, logs)
  --allow-skip        exit 0 with "skipped: ..." where mount namespaces are not permitted
  --verbose           stream every RUN's output (default: its last lines; all of it on failure)`;

function parseOptions(argv) {
  const options = { buildArgs: new Map(), dockerfile: 'deploy/Dockerfile', ref: 'HEAD', port: undefined, keep: false, allowSkip: false, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usageError(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--keep') options.keep = true;
    else if (arg === '--allow-skip') options.allowSkip = true;
    else if (arg === '--verbose') options.verbose = true;
    else if (arg === '--dockerfile') options.dockerfile = value();
    else if (arg === '--ref') options.ref = value();
    else if (arg === '--port') {
      const port = Number(value());
      if (!Number.isInteger(port) || port < 1 || port > 65535) usageError('--port needs a port number (1 to 65535)');
      options.port = port;
    } else if (arg === '--build-arg') {
      const kv = value();
      const eq = kv.indexOf('=');
      if (eq <= 0) usageError(`--build-arg needs NAME=VALUE, got ${JSON.stringify(kv)}`);
      options.buildArgs.set(kv.slice(0, eq), kv.slice(eq + 1));
    } else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else usageError(`unknown option ${arg}`);
  }
  if (!options.buildArgs.has('MODEL')) options.buildArgs.set('MODEL', 'deploy-check-model.safetensors');
  return options;
}

function usageError(message) {
  console.error(`deploy-check: ${message}\n${USAGE}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------
// Output: every step with the time it started at and took

class CheckError extends Error {}
const fail = (message) => {
  throw new CheckError(message);
};
const since = (t) => `${((Date.now() - t) / 1000).toFixed(1)} s`;
const clock = () => `[${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s]`;
const log = (message) => console.log(`${clock()} ${message}`);
const note = (message) => console.log(`${' '.repeat(9)}   ${message}`);
let currentStep = 'start';

async function step(name, fn) {
  currentStep = name;
  const t = Date.now();
  log(`> ${name}`);
  const result = await fn();
  log(`  ok (${since(t)}): ${name}`);
  return result;
}

const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`; // one sh word

// ---------------------------------------------------------------------------------------
// The Dockerfile: parser directives, comments, line continuations, one instruction a line

const KNOWN = new Set(['FROM', 'ARG', 'ENV', 'LABEL', 'WORKDIR', 'COPY', 'RUN', 'USER', 'EXPOSE', 'STOPSIGNAL', 'ENTRYPOINT', 'CMD']);

function parseDockerfile(text, file) {
  const lines = text.split(/\r?\n/);
  let first = 0;
  for (; first < lines.length; first++) {
    const m = /^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$/.exec(lines[first]);
    if (!m || !['syntax', 'escape', 'check'].includes(m[1].toLowerCase())) break;
    if (m[1].toLowerCase() === 'escape' && m[2] !== '\\') fail(`${file}:${first + 1}: escape=${m[2]} is not supported by this check (only the default \\)`);
  }
  const instructions = [];
  let buffer = null;
  let startLine = 0;
  for (let n = first; n < lines.length; n++) {
    const line = lines[n];
    if (/^\s*#/.test(line)) continue; // a comment, also inside a continuation (BuildKit drops those)
    if (buffer === null) {
      if (/^\s*$/.test(line)) continue;
      buffer = '';
      startLine = n + 1;
    } else if (/^\s*$/.test(line)) continue; // an empty line inside a continuation
    if (/\\[ \t]*$/.test(line)) {
      buffer += line.replace(/\\[ \t]*$/, '');
      continue;
    }
    instructions.push(parseInstruction(buffer + line, file, startLine));
    buffer = null;
  }
  if (buffer !== null) instructions.push(parseInstruction(buffer, file, startLine));
  return instructions;
}

function parseInstruction(text, file, line) {
  const m = /^\s*(\S+)\s*([\s\S]*?)\s*$/.exec(text);
  const keyword = m[1].toUpperCase();
  const where = `${file}:${line}`;
  if (!KNOWN.has(keyword)) {
    fail(`${where}: ${keyword} is an instruction this check does not understand; it refuses the Dockerfile rather than skip a step (supported: ${[...KNOWN].join(', ')})`);
  }
  let rest = m[2];
  const flags = new Map();
  if (['FROM', 'COPY', 'RUN'].includes(keyword)) {
    let f;
    while ((f = /^--([A-Za-z-]+)(?:=(\S*))?\s*/.exec(rest))) {
      flags.set(f[1], f[2] ?? '');
      rest = rest.slice(f[0].length);
    }
  }
  const allowed = { FROM: [], RUN: [], COPY: ['from'] }[keyword] ?? [];
  for (const flag of flags.keys()) {
    if (!allowed.includes(flag)) fail(`${where}: ${keyword} --${flag} is not supported by this check (it would not reproduce it faithfully)`);
  }
  if (/<<-?\s*["']?[A-Za-z_][A-Za-z0-9_]*["']?/.test(rest) && ['RUN', 'COPY'].includes(keyword)) {
    fail(`${where}: a here-document (<<) in ${keyword}: BuildKit reads those as heredocs, which this check does not support`);
  }
  return { keyword, rest, flags, where, text: `${keyword} ${rest}`.trim(), json: parseJsonForm(rest) };
}

/** The exec (JSON) form, or undefined for the shell form (as Docker: not a JSON array of strings = shell form). */
function parseJsonForm(rest) {
  if (!rest.startsWith('[')) return undefined;
  try {
    const value = JSON.parse(rest);
    if (Array.isArray(value) && value.every((s) => typeof s === 'string')) return value;
  } catch {
    // shell form, as Docker does
  }
  return undefined;
}

// Words and variables as the Dockerfile frontend expands them (ARG and ENV values; $NAME, ${NAME},
// ${NAME:-word}, ${NAME-word}, ${NAME:+word}, ${NAME+word}; quotes and backslash escapes).
function words(text, vars, where, { split = true } = {}) {
  const out = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (split && /\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
      i++;
      continue;
    }
    inWord = true;
    if (c === '\\') {
      cur += i + 1 < text.length ? text[i + 1] : c;
      i += 2;
    } else if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) fail(`${where}: unterminated ' in ${text}`);
      cur += text.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < text.length && '"\\$'.includes(text[i + 1])) {
          cur += text[i + 1];
          i += 2;
        } else if (text[i] === '$') {
          const r = variable(text, i, vars, where);
          cur += r.value;
          i = r.end;
        } else cur += text[i++];
      }
      if (i >= text.length) fail(`${where}: unterminated " in ${text}`);
      i++;
    } else if (c === '$') {
      const r = variable(text, i, vars, where);
      cur += r.value;
      i = r.end;
    } else {
      cur += c;
      i++;
    }
  }
  if (inWord) out.push(cur);
  return out;
}

function variable(text, i, vars, where) {
  if (text[i + 1] === '{') {
    const close = text.indexOf('}', i + 2);
    if (close < 0) fail(`${where}: unterminated \${ in ${text}`);
    const inner = text.slice(i + 2, close);
    const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([\s\S]*))?$/.exec(inner);
    if (!m) fail(`${where}: cannot interpret \${${inner}} (this check knows \${NAME}, \${NAME:-word}, \${NAME-word}, \${NAME:+word}, \${NAME+word})`);
    const value = vars.get(m[1]);
    const word = () => words(m[3], vars, where, { split: false }).join('');
    let result = value ?? '';
    if (m[2] === ':-') result = value ? value : word();
    else if (m[2] === '-') result = value !== undefined ? value : word();
    else if (m[2] === ':+') result = value ? word() : '';
    else if (m[2] === '+') result = value !== undefined ? word() : '';
    return { value: result, end: close + 1 };
  }
  const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i + 1));
  if (m) return { value: vars.get(m[0]) ?? '', end: i + 1 + m[0].length };
  return { value: '$', end: i + 1 };
}

/** Stages: the instructions after each FROM; ARGs before the first FROM are global (for FROM lines). */
function splitStages(instructions, file) {
  const globals = [];
  const stages = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      stages.push({ index: stages.length, from: ins, instructions: [] });
    } else if (stages.length === 0) {
      if (ins.keyword !== 'ARG') fail(`${ins.where}: ${ins.keyword} before the first FROM (only ARG may come before it)`);
      globals.push(ins);
    } else stages[stages.length - 1].instructions.push(ins);
  }
  if (stages.length === 0) fail(`${file}: no FROM instruction`);
  return { globals, stages };
}

/** `ARG a=1 b` -> [['a', '1'], ['b', undefined]] (defaults expanded with what is declared so far). */
function argDeclarations(ins, vars) {
  const out = [];
  for (const raw of ins.rest.split(/\s+/).filter(Boolean)) {
    const eq = raw.indexOf('=');
    const name = eq < 0 ? raw : raw.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) fail(`${ins.where}: bad ARG name ${JSON.stringify(name)}`);
    out.push([name, eq < 0 ? undefined : words(raw.slice(eq + 1), vars, ins.where, { split: false }).join('')]);
  }
  if (out.length === 0) fail(`${ins.where}: ARG needs a name`);
  return out;
}

function envDeclarations(ins, vars) {
  const ws = words(ins.rest, vars, ins.where);
  if (ws.length === 0) fail(`${ins.where}: ${ins.keyword} needs arguments`);
  if (!ws[0].includes('=')) {
    // legacy `ENV NAME value with spaces`
    return [[ws[0], words(ins.rest.replace(/^\s*\S+\s*/, ''), vars, ins.where, { split: false }).join('')]];
  }
  return ws.map((w) => {
    const eq = w.indexOf('=');
    if (eq <= 0) fail(`${ins.where}: expected NAME=value in ${ins.keyword}, got ${JSON.stringify(w)}`);
    return [w.slice(0, eq), w.slice(eq + 1)];
  });
}

// ---------------------------------------------------------------------------------------
// .dockerignore, as moby/patternmatcher reads it: patterns relative to the context root (a leading
// / dropped, cleaned), * and ? within one path element, ** across any number of them, \ escapes,
// leading ! re-includes; the last matching pattern decides, and a pattern that matches a parent
// directory matches everything under it.

function parseDockerignore(text, file) {
  const patterns = [];
  for (const [n, rawLine] of text.split(/\r?\n/).entries()) {
    let line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    let negate = false;
    if (line.startsWith('!')) {
      negate = true;
      line = line.slice(1).trim();
    }
    let cleaned = path.posix.normalize(line).replace(/^\/+/, '').replace(/\/+$/, '');
    if (cleaned === '' || cleaned === '.' || cleaned.startsWith('../')) fail(`${file}:${n + 1}: cannot interpret the pattern ${JSON.stringify(rawLine)}`);
    if (/[[\]{}]/.test(cleaned)) fail(`${file}:${n + 1}: the pattern ${JSON.stringify(rawLine)} uses [ ] or { }, which this check does not interpret`);
    let re = '';
    for (let i = 0; i < cleaned.length; i++) {
      const c = cleaned[i];
      if (c === '*' && cleaned[i + 1] === '*') {
        i++;
        if (cleaned[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else re += '.*';
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else if (c === '\\') {
        if (i + 1 >= cleaned.length) fail(`${file}:${n + 1}: the pattern ${JSON.stringify(rawLine)} ends in an escape`);
        re += escapeRegExp(cleaned[++i]);
      } else re += escapeRegExp(c);
    }
    patterns.push({ text: rawLine.trim(), negate, re: new RegExp(`^${re}$`) });
  }
  return patterns;
}

const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

function dockerignored(rel, patterns) {
  let excluded = false;
  const parts = rel.split('/');
  for (const p of patterns) {
    let match = p.re.test(rel);
    // A pattern matching a parent directory of the file matches the file (patternmatcher).
    for (let k = 1; !match && k < parts.length; k++) match = p.re.test(parts.slice(0, k).join('/'));
    if (match) excluded = !p.negate;
  }
  return excluded;
}

// ---------------------------------------------------------------------------------------
// Paths inside a stage root: symlinks resolved within the root, as in the container

function resolveIn(root, inner, { followLast = true } = {}) {
  let parts = inner.split('/').filter(Boolean);
  let cur = [];
  let hops = 0;
  let missing = false; // below a name that does not exist, the rest is taken as written
  while (parts.length > 0) {
    const part = parts.shift();
    if (part === '.') continue;
    if (part === '..') {
      cur.pop(); // never above the root, as in the container
      continue;
    }
    const host = path.join(root, ...cur, part);
    let st;
    if (!missing) {
      try {
        st = fs.lstatSync(host);
      } catch {
        missing = true;
      }
    }
    if (missing) {
      cur.push(part);
      continue;
    }
    if (st.isSymbolicLink() && (parts.length > 0 || followLast)) {
      if (++hops > 40) fail(`too many symlinks resolving ${inner}`);
      const target = fs.readlinkSync(host);
      if (target.startsWith('/')) cur = [];
      parts = target.split('/').filter(Boolean).concat(parts);
      continue;
    }
    cur.push(part);
  }
  return { host: path.join(root, ...cur), inner: '/' + cur.join('/') };
}

const hasWildcard = (s) => /[*?[]/.test(s);

function goMatch(pattern, name, where) {
  if (pattern.includes('[')) fail(`${where}: [ ] in a COPY source is not supported by this check`);
  const re = pattern.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${re}$`).test(name);
}

function globIn(root, inner, where) {
  let found = [''];
  for (const part of inner.split('/').filter(Boolean)) {
    const next = [];
    for (const dir of found) {
      if (!hasWildcard(part)) {
        const r = resolveIn(root, dir + '/' + part, { followLast: false });
        if (fs.existsSync(r.host) || isSymlink(r.host)) next.push(r.inner === '/' ? '' : r.inner);
        continue;
      }
      const r = resolveIn(root, dir || '/');
      let names = [];
      try {
        names = fs.readdirSync(r.host).sort();
      } catch {
        continue;
      }
      for (const name of names) if (goMatch(part, name, where)) next.push(`${r.inner === '/' ? '' : r.inner}/${name}`);
    }
    found = next;
  }
  return found.filter((p) => p !== '');
}

const isSymlink = (p) => {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
};

/** Copies like COPY: contents of a directory, modes and mtimes kept, owner root, symlinks as symlinks. */
function copyEntry(src, dst) {
  const st = fs.lstatSync(src);
  if (st.isSymbolicLink()) {
    fs.rmSync(dst, { force: true, recursive: true });
    fs.symlinkSync(fs.readlinkSync(src), dst);
    fs.lchownSync(dst, 0, 0);
    return 1;
  }
  if (st.isDirectory()) {
    let n = 0;
    if (!fs.existsSync(dst)) fs.mkdirSync(dst);
    for (const name of fs.readdirSync(src)) n += copyEntry(path.join(src, name), path.join(dst, name));
    fs.chmodSync(dst, st.mode & 0o7777);
    fs.chownSync(dst, 0, 0);
    fs.utimesSync(dst, st.atime, st.mtime);
    return n;
  }
  if (!st.isFile()) fail(`COPY: ${src} is neither a file, a directory nor a symlink`);
  if (isSymlink(dst) || (fs.existsSync(dst) && fs.statSync(dst).isDirectory())) fs.rmSync(dst, { force: true, recursive: true });
  fs.copyFileSync(src, dst);
  fs.chmodSync(dst, st.mode & 0o7777);
  fs.chownSync(dst, 0, 0);
  fs.utimesSync(dst, st.atime, st.mtime);
  return 1;
}

/** mkdir -p inside a stage root (created directories 0755, root's), refusing the base's read-only paths. */
function mkdirIn(stage, inner) {
  const r = resolveIn(stage.root, inner);
  guardWritable(stage, r.inner, inner);
  const parts = r.inner.split('/').filter(Boolean);
  let host = stage.root;
  for (const part of parts) {
    host = path.join(host, part);
    if (!fs.existsSync(host)) {
      fs.mkdirSync(host, { mode: 0o755 });
      fs.chmodSync(host, 0o755);
    }
  }
  return r;
}

function guardWritable(stage, resolvedInner, asWritten) {
  const top = resolvedInner.split('/').filter(Boolean)[0];
  if (top && (BASE_DIRS.includes(top) || SPECIAL_DIRS.includes(top))) {
    fail(`${asWritten} is under /${top}, which this check takes read-only from this machine (the base image stand-in): it cannot write there`);
  }
}

// ---------------------------------------------------------------------------------------
// The base image stand-in and the namespaces a step runs in

const BASE_DIRS = ['usr', 'etc', 'var']; // bind-mounted read-only from this machine
const SPECIAL_DIRS = ['dev', 'proc', 'sys'];
const OWN_DIRS = ['tmp', 'root', 'home', 'opt', 'run', 'srv', 'mnt', 'media', 'boot']; // each stage's own
const SLIM_HIDDEN = ['cc', 'c++', 'gcc', 'g++', 'cpp', 'make', 'python3', 'python', 'git', 'cmake']; // not in node:*-slim
const IMAGE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const NODE_UID = 1000; // the node user of the node images (node:node, 1000:1000, home /home/node)

function baseImageStandIn(image, where) {
  const m = /^(?:docker\.io\/)?(?:library\/)?node:(20(?:\.\d+){0,2})(-bookworm)?(-slim)?(?:@sha256:[0-9a-f]{64})?$/.exec(image);
  if (!m) fail(`${where}: FROM ${image}: this check can only stand in for node:20 on Debian 12 (node:20-bookworm, node:20-bookworm-slim) with this machine's system`);
  return { slim: m[3] !== undefined };
}

function hostDescription() {
  const release = fs.readFileSync('/etc/os-release', 'utf8');
  const field = (k) => (new RegExp(`^${k}="?([^"\\n]*)"?`, 'm').exec(release) ?? [])[1];
  const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' }).stdout?.trim();
  return { id: field('ID'), version: field('VERSION_ID'), pretty: field('PRETTY_NAME'), node: process.version, npm };
}

function makeSkeleton(root) {
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  fs.chmodSync(root, 0o755);
  for (const name of fs.readdirSync('/')) {
    const host = path.join('/', name);
    const st = fs.lstatSync(host);
    if (!/^(bin|sbin|lib|lib32|lib64|libx32)$/.test(name)) continue;
    if (!st.isSymbolicLink()) fail(`this machine's /${name} is not a link into /usr (not merged-/usr as Debian 12 and its images are): this check does not support that`);
    fs.symlinkSync(fs.readlinkSync(host), path.join(root, name));
  }
  for (const dir of [...BASE_DIRS, ...SPECIAL_DIRS, ...OWN_DIRS]) fs.mkdirSync(path.join(root, dir), { mode: 0o755 });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.chmodSync(path.join(root, 'root'), 0o700);
  fs.mkdirSync(path.join(root, 'home', 'node'), { mode: 0o755 });
  fs.chownSync(path.join(root, 'home', 'node'), NODE_UID, NODE_UID);
}

/** This machine's /etc/passwd and /etc/group with the node images' node user (1000:1000) in place of whoever has that id here. */
function writeUserDatabase(dir) {
  const keep = (file, idField) =>
    fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('node:') && l.split(':')[idField] !== String(NODE_UID));
  const passwd = [...keep('/etc/passwd', 2), `node:x:${NODE_UID}:${NODE_UID}::/home/node:/bin/bash`];
  const group = [...keep('/etc/group', 2), `node:x:${NODE_UID}:`];
  fs.writeFileSync(path.join(dir, 'passwd'), passwd.join('\n') + '\n', { mode: 0o644 });
  fs.writeFileSync(path.join(dir, 'group'), group.join('\n') + '\n', { mode: 0o644 });
  return { passwd: path.join(dir, 'passwd'), group: path.join(dir, 'group') };
}

function lookupUser(spec, db, where) {
  const [user, group] = spec.split(':');
  const passwd = fs.readFileSync(db.passwd, 'utf8').split('\n').map((l) => l.split(':'));
  const groups = fs.readFileSync(db.group, 'utf8').split('\n').map((l) => l.split(':'));
  const entry = /^\d+$/.test(user) ? passwd.find((e) => e[2] === user) : passwd.find((e) => e[0] === user);
  if (!entry && !/^\d+$/.test(user)) fail(`${where}: USER ${spec}: no user ${user} in the stage's /etc/passwd`);
  const uid = Number(entry ? entry[2] : user);
  let gid = Number(entry ? entry[3] : 0);
  if (group !== undefined) {
    const g = /^\d+$/.test(group) ? [, , group] : groups.find((e) => e[0] === group);
    if (!g) fail(`${where}: USER ${spec}: no group ${group} in the stage's /etc/group`);
    gid = Number(g[2]);
  }
  const name = entry?.[0];
  const supplementary = group === undefined && name ? groups.filter((g) => (g[3] ?? '').split(',').includes(name)).map((g) => Number(g[2])) : [];
  return { uid, gid, supplementary, home: entry?.[5] || '/' };
}

/** The shell script `unshare` runs: mounts of the stage root, then chroot, user and cwd, then exec argv. */
function namespaceScript(ctx, stage, { argv, env, cwd, user, hostname }) {
  const R = stage.root;
  const lines = ['set -e', 'umask 022'];
  for (const dir of BASE_DIRS) lines.push(`mount --rbind /${dir} ${q(`${R}/${dir}`)}`, `mount -o remount,bind,ro ${q(`${R}/${dir}`)}`);
  lines.push(`mount --bind -o ro ${q(ctx.users.passwd)} ${q(`${R}/etc/passwd`)}`, `mount --bind -o ro ${q(ctx.users.group)} ${q(`${R}/etc/group`)}`);
  lines.push(`mount --rbind /dev ${q(`${R}/dev`)}`, `mount --rbind /sys ${q(`${R}/sys`)}`, `mount -o remount,bind,ro ${q(`${R}/sys`)}`);
  lines.push(`mount -t proc proc ${q(`${R}/proc`)}`);
  if (stage.slim) for (const tool of ctx.slimHidden) lines.push(`mount --bind -o ro ${q(ctx.stub)} ${q(R + tool)}`);
  lines.push(`hostname ${q(hostname)}`);
  const envArgs = [...env].map(([k, v]) => q(`${k}=${v}`)).join(' ');
  const setpriv = user.uid === 0 && user.gid === 0 ? '' : `/usr/bin/setpriv --reuid=${user.uid} --regid=${user.gid} ${user.supplementary.length ? `--groups=${user.supplementary.join(',')}` : '--clear-groups'} `;
  lines.push(`exec /usr/sbin/chroot ${q(R)} ${setpriv}/usr/bin/env -i --chdir=${q(cwd)} ${envArgs} ${argv.map(q).join(' ')}`);
  return lines.join('\n');
}

const UNSHARE = ['-m', '-p', '-u', '--fork', '--kill-child', '--propagation', 'private', '--'];

function probeNamespaces(tmp) {
  if (process.platform !== 'linux') return 'this is not Linux (mount namespaces and chroot are Linux features)';
  if (process.getuid() !== 0) return `it runs as uid ${process.getuid()}, not root (bind mounts, chroot and switching to the image's USER need root)`;
  for (const tool of ['unshare', 'chroot', 'mount', 'setpriv', 'hostname']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  const dir = fs.mkdtempSync(path.join(tmp, 'probe-'));
  const r = spawnSync('unshare', [...UNSHARE, '/bin/sh', '-c', `mount -t tmpfs probe ${q(dir)} && mount -t proc proc ${q(dir)} && hostname probe`], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  if (r.error) return `unshare could not run: ${r.error.message}`;
  if (r.status !== 0) return `\`unshare -m -p -u --fork\` with mounts is not permitted here: ${(r.stderr || `exit ${r.status}`).trim()}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Child processes

const children = new Set();

function runInNamespace(script, { logFile, verbose, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const out = fs.openSync(logFile, 'a');
    const child = spawn('unshare', [...UNSHARE, '/bin/sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const write = (chunk) => {
      fs.writeSync(out, chunk);
      if (verbose) process.stdout.write(chunk.toString().replace(/^(?=.)/gm, '           | '));
    };
    child.stdout.on('data', write);
    child.stderr.on('data', write);
    const timer = setTimeout(() => killNamespace(child), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      fs.closeSync(out);
      resolve({ code, signal });
    });
  });
}

/**
 * Kills what runs under an `unshare --fork`: SIGKILL to PID 1 of its PID namespace (which takes
 * every process of the namespace along), then to unshare. (unshare's --kill-child alone is not
 * enough: setpriv's change of user clears the parent-death signal.)
 */
function killNamespace(child) {
  const init = forkedChild(child.pid);
  for (const pid of [init, child.pid]) {
    try {
      if (pid) process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

function tail(file, n) {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n);
}

/** The pid (on this machine) of the process that `unshare --fork` started: PID 1 of the new namespace. */
function forkedChild(pid) {
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host: '0.0.0.0', exclusive: true }, () => server.close(() => resolve(true)));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ port: 0, host: '0.0.0.0' }, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function duHuman(dir) {
  const r = spawnSync('du', ['-sh', '--one-file-system', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\t')[0] : '?';
}

// ---------------------------------------------------------------------------------------
// The build

async function build(ctx, parsed) {
  const { stages, globals } = parsed;
  const globalArgs = new Map();
  const consumed = new Set();
  for (const ins of globals) {
    for (const [name, def] of argDeclarations(ins, globalArgs)) {
      consumed.add(name);
      globalArgs.set(name, ctx.options.buildArgs.has(name) ? ctx.options.buildArgs.get(name) : def);
    }
  }
  // FROM lines: image or earlier stage, and the stage's name
  for (const stage of stages) {
    const ws = words(stage.from.rest, globalArgs, stage.from.where);
    if (!(ws.length === 1 || (ws.length === 3 && ws[1].toUpperCase() === 'AS'))) fail(`${stage.from.where}: expected FROM image [AS name], got ${stage.from.text}`);
    stage.image = ws[0];
    stage.name = ws.length === 3 ? ws[2].toLowerCase() : undefined;
    stage.label = stage.name ?? `#${stage.index}`;
  }
  const byRef = (ref, before, where) => {
    const found = stages.slice(0, before).find((s) => s.name === ref.toLowerCase() || String(s.index) === ref);
    if (!found) fail(`${where}: --from=${ref} names no earlier stage (an image there would have to be pulled, which this check cannot do)`);
    return found;
  };
  // The stages the last one needs (BuildKit builds only those)
  const needed = new Set();
  const visit = (stage) => {
    if (needed.has(stage)) return;
    needed.add(stage);
    const base = stages.slice(0, stage.index).find((s) => s.name === stage.image.toLowerCase());
    if (base) visit(base);
    for (const ins of stage.instructions) if (ins.keyword === 'COPY' && ins.flags.has('from')) visit(byRef(words(ins.flags.get('from'), globalArgs, ins.where, { split: false }).join(''), stage.index, ins.where));
  };
  visit(stages[stages.length - 1]);

  let runCount = 0;
  for (const stage of stages) {
    if (!needed.has(stage)) {
      log(`  stage ${stage.label} (${stage.from.where}) is not needed by the last stage: not built, as BuildKit does`);
      continue;
    }
    stage.root = path.join(ctx.tmp, 'stages', `${stage.index}-${stage.name ?? 'stage'}`, 'rootfs');
    const baseStage = stages.slice(0, stage.index).find((s) => s.name === stage.image.toLowerCase());
    await step(`stage ${stage.label}: ${stage.from.text}`, async () => {
      if (baseStage) {
        fs.mkdirSync(path.dirname(stage.root), { recursive: true });
        const r = spawnSync('cp', ['-a', baseStage.root, stage.root], { encoding: 'utf8' });
        if (r.status !== 0) fail(`copying stage ${baseStage.label}'s root: ${r.stderr}`);
        Object.assign(stage, { slim: baseStage.slim, env: new Map(baseStage.env), workdir: baseStage.workdir, user: baseStage.user, expose: [...baseStage.expose], stopsignal: baseStage.stopsignal, entrypoint: baseStage.entrypoint, cmd: baseStage.cmd });
        note(`starts from stage ${baseStage.label}'s root (copied)`);
      } else {
        const { slim } = baseImageStandIn(stage.image, stage.from.where);
        makeSkeleton(stage.root);
        Object.assign(stage, { slim, env: new Map([['PATH', IMAGE_PATH], ['NODE_VERSION', process.versions.node]]), workdir: '/', user: 'root', expose: [], stopsignal: undefined, entrypoint: undefined, cmd: undefined });
        note(`base image ${stage.image} stood in for by this machine's system: ${ctx.host.pretty}, node ${ctx.host.node}, npm ${ctx.host.npm} (its /usr, /etc, /var read-only)`);
        if (slim) note(`-slim: hidden from the stage as the slim image lacks them: ${ctx.slimHiddenNames.join(', ')}`);
      }
      note(`stage root: ${stage.root}`);
    });
    stage.args = new Map();
    for (const ins of stage.instructions) {
      const vars = new Map([...stage.args, ...stage.env]);
      switch (ins.keyword) {
        case 'ARG':
          for (const [name, def] of argDeclarations(ins, vars)) {
            consumed.add(name);
            const value = ctx.options.buildArgs.has(name) ? ctx.options.buildArgs.get(name) : def !== undefined ? def : globalArgs.get(name);
            stage.args.set(name, value);
            log(`  stage ${stage.label}: ${ins.text}  ->  ${name}=${value === undefined ? '(unset)' : JSON.stringify(value)}${ctx.options.buildArgs.has(name) ? ' (--build-arg)' : ''}`);
          }
          break;
        case 'ENV':
          for (const [k, v] of envDeclarations(ins, vars)) stage.env.set(k, v);
          log(`  stage ${stage.label}: ${ins.text}`);
          break;
        case 'LABEL':
          envDeclarations(ins, vars); // checked, no effect on what runs
          log(`  stage ${stage.label}: ${ins.text}  (metadata only)`);
          break;
        case 'WORKDIR': {
          const dir = words(ins.rest, vars, ins.where, { split: false }).join('');
          if (!dir) fail(`${ins.where}: WORKDIR needs a path`);
          stage.workdir = path.posix.resolve(stage.workdir, dir);
          mkdirIn(stage, stage.workdir);
          log(`  stage ${stage.label}: ${ins.text}  ->  ${stage.workdir} (${path.join(stage.root, stage.workdir)})`);
          break;
        }
        case 'USER':
          stage.user = words(ins.rest, vars, ins.where, { split: false }).join('');
          lookupUser(stage.user, ctx.users, ins.where);
          log(`  stage ${stage.label}: ${ins.text}`);
          break;
        case 'EXPOSE':
          for (const w of words(ins.rest, vars, ins.where)) {
            const m = /^(\d+)(?:\/(tcp|udp))?$/i.exec(w);
            if (!m) fail(`${ins.where}: EXPOSE ${w}: this check understands PORT or PORT/tcp|udp`);
            stage.expose.push({ port: Number(m[1]), proto: (m[2] ?? 'tcp').toLowerCase() });
          }
          log(`  stage ${stage.label}: ${ins.text}`);
          break;
        case 'STOPSIGNAL': {
          const s = words(ins.rest, vars, ins.where, { split: false }).join('').toUpperCase();
          const name = /^\d+$/.test(s) ? Object.keys(os.constants.signals).find((k) => os.constants.signals[k] === Number(s)) : s.startsWith('SIG') ? s : `SIG${s}`;
          if (!name || !(name in os.constants.signals)) fail(`${ins.where}: STOPSIGNAL ${s} is not a signal this machine knows`);
          stage.stopsignal = name;
          log(`  stage ${stage.label}: ${ins.text}`);
          break;
        }
        case 'ENTRYPOINT':
        case 'CMD': {
          let argv = ins.json;
          if (argv === undefined) {
            if (ins.rest.startsWith('[')) log(`  warning: ${ins.where}: ${ins.keyword} looks like JSON but is not a JSON array of strings: Docker runs it in the shell form`);
            argv = ['/bin/sh', '-c', ins.rest];
          }
          if (ins.keyword === 'ENTRYPOINT') {
            stage.entrypoint = argv;
            stage.cmd = undefined; // ENTRYPOINT resets an inherited CMD
          } else stage.cmd = argv;
          log(`  stage ${stage.label}: ${ins.text}`);
          break;
        }
        case 'COPY':
          await step(`stage ${stage.label}: ${ins.text}`, async () => copyInstruction(ctx, stage, ins, vars, (ref) => byRef(ref, stage.index, ins.where)));
          break;
        case 'RUN':
          runCount++;
          await step(`stage ${stage.label}: ${ins.text}`, async () => runInstruction(ctx, stage, ins, runCount));
          break;
        default:
          fail(`${ins.where}: ${ins.keyword} is not supported`);
      }
    }
    log(`  stage ${stage.label} built: ${duHuman(stage.root)} in its own root`);
  }
  for (const name of ctx.options.buildArgs.keys()) if (!consumed.has(name)) log(`  warning: --build-arg ${name} was not consumed by any ARG (docker build warns the same)`);
  return stages[stages.length - 1];
}

function copyInstruction(ctx, stage, ins, vars, byRef) {
  const list = ins.json ? ins.json.map((w) => words(w, vars, ins.where, { split: false }).join('')) : words(ins.rest, vars, ins.where);
  if (list.length < 2) fail(`${ins.where}: COPY needs at least one source and a destination (after expansion: ${JSON.stringify(list)})`);
  const dest = list.pop();
  const fromRef = ins.flags.has('from') ? words(ins.flags.get('from'), vars, ins.where, { split: false }).join('') : undefined;
  const from = fromRef === undefined ? undefined : byRef(fromRef);
  const srcRoot = from ? from.root : ctx.contextDir;
  const what = from ? `stage ${from.label}` : 'the build context';
  const sources = [];
  for (const src of list) {
    const inner = path.posix.normalize('/' + src);
    if (hasWildcard(src)) {
      const found = globIn(srcRoot, inner, ins.where);
      if (found.length === 0) fail(`${ins.where}: COPY ${src}: no file in ${what} matches`);
      sources.push(...found.map((p) => ({ src, inner: p })));
    } else sources.push({ src, inner });
  }
  const multiple = sources.length > 1 || list.some(hasWildcard);
  if (list.length > 1 && !dest.endsWith('/')) fail(`${ins.where}: COPY with more than one source needs a destination directory ending in / (got ${dest})`);
  const destInner = path.posix.resolve(stage.workdir, dest);
  const destDirWanted = dest.endsWith('/') || dest === '.' || dest.endsWith('/.') || multiple;
  let files = 0;
  for (const { src, inner } of sources) {
    const r = resolveIn(srcRoot, inner);
    if (from) guardReadable(from, r.inner, src, ins.where);
    if (!fs.existsSync(r.host) && !isSymlink(r.host)) {
      const hint = from ? '' : ` (it is not committed, was not made by this check${ctx.ignoreFile === 'no .dockerignore' ? '' : `, or ${ctx.ignoreFile} excludes it`})`;
      fail(`${ins.where}: COPY ${src}: not found in ${what}${hint}`);
    }
    const st = fs.statSync(r.host);
    if (st.isDirectory()) {
      // A directory's contents go into the destination; the destination directory itself keeps
      // its own owner and mode (WORKDIR's for COPY . .).
      const d = mkdirIn(stage, destInner);
      for (const name of fs.readdirSync(r.host)) files += copyEntry(path.join(r.host, name), path.join(d.host, name));
      continue;
    }
    const existing = resolveIn(stage.root, destInner);
    const intoDir = destDirWanted || (fs.existsSync(existing.host) && fs.statSync(existing.host).isDirectory());
    let target;
    if (intoDir) target = path.join(mkdirIn(stage, destInner).host, path.posix.basename(r.inner));
    else {
      mkdirIn(stage, path.posix.dirname(destInner));
      const t = resolveIn(stage.root, destInner, { followLast: false });
      guardWritable(stage, t.inner, dest);
      target = t.host;
    }
    files += copyEntry(r.host, target);
  }
  note(`${files} file(s) from ${what} into ${destInner}${destDirWanted ? '/' : ''} of stage ${stage.label}`);
}

function guardReadable(stage, resolvedInner, asWritten, where) {
  const top = resolvedInner.split('/').filter(Boolean)[0];
  if (top && (BASE_DIRS.includes(top) || SPECIAL_DIRS.includes(top))) {
    fail(`${where}: COPY --from=${stage.label} ${asWritten}: /${top} of a stage is this machine's (the base image stand-in), not the stage's own: this check cannot copy it faithfully`);
  }
}

function stageEnv(ctx, stage, { withArgs }) {
  const user = lookupUser(stage.user, ctx.users, stage.from.where);
  const env = new Map();
  if (withArgs) for (const [k, v] of stage.args) if (v !== undefined) env.set(k, v);
  for (const [k, v] of stage.env) env.set(k, v);
  if (!env.has('HOME')) env.set('HOME', user.home);
  return { env, user };
}

async function runInstruction(ctx, stage, ins, n) {
  const argv = ins.json ?? ['/bin/sh', '-c', ins.rest];
  const { env, user } = stageEnv(ctx, stage, { withArgs: true });
  for (const [k, v] of ctx.extraBuildEnv) if (!env.has(k)) env.set(k, v);
  const logFile = path.join(ctx.tmp, 'logs', `run-${n}.log`);
  const script = namespaceScript(ctx, stage, { argv, env, cwd: stage.workdir, user, hostname: 'buildkitsandbox' });
  note(`in ${stage.workdir} as ${stage.user} (uid ${user.uid}), log ${logFile}`);
  const t = Date.now();
  const result = await runInNamespace(script, { logFile, verbose: ctx.options.verbose, timeoutMs: 45 * 60 * 1000 });
  const last = tail(logFile, result.code === 0 ? 4 : 60);
  if (result.code !== 0) {
    console.log(last.map((l) => `           | ${l}`).join('\n'));
    const readOnly = last.some((l) => /read-only file system/i.test(l))
      ? ` (note: /${BASE_DIRS.join(', /')} are this machine's, read-only here: a step that writes there cannot be checked this way, which is no proof the Dockerfile is wrong)`
      : '';
    fail(`${ins.where}: RUN failed (${result.signal ? `signal ${result.signal}` : `exit ${result.code}`}) after ${since(t)}: ${ins.text}${readOnly}`);
  }
  if (!ctx.options.verbose) for (const l of last) note(`| ${l}`);
}

// ---------------------------------------------------------------------------------------
// The context and the model

function makeContext(ctx, lib) {
  const dir = ctx.contextDir;
  fs.mkdirSync(dir, { recursive: true });
  const commit = spawnSync('git', ['-C', repo, 'rev-parse', '--short', ctx.options.ref], { encoding: 'utf8' });
  if (commit.status !== 0) fail(`git rev-parse ${ctx.options.ref}: ${commit.stderr.trim()}`);
  // Modes as a checkout with umask 022 has them (git archive writes 0664/0775, tar as root keeps those).
  const r = spawnSync('sh', ['-c', `umask 022 && git -C ${q(repo)} archive --format=tar ${q(ctx.options.ref)} | tar -x --no-same-permissions -C ${q(dir)}`], { encoding: 'utf8' });
  if (r.status !== 0) fail(`git archive ${ctx.options.ref}: ${r.stderr.trim()}`);
  const dirty = spawnSync('git', ['-C', repo, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).length;
  note(`git archive ${ctx.options.ref} (${commit.stdout.trim()}) into ${dir}${dirty ? ` (the working tree has ${dirty} uncommitted change(s); they are not in the context)` : ''}`);
  return dir;
}

async function makeModel(ctx, lib) {
  const name = ctx.options.buildArgs.get('MODEL');
  const inner = path.posix.normalize('/' + name);
  const file = path.join(ctx.contextDir, inner);
  if (fs.existsSync(file)) fail(`the context already has ${name}: pick another --build-arg MODEL`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const flow = lib.createMAF({ dim: 3, layers: 2, hidden: [8], seed: 11 });
  await lib.saveFlow(flow, file);
  const info = { file, name, dim: flow.dim, numParameters: flow.numParameters };
  flow.dispose();
  note(`createMAF({ dim: 3, layers: 2, hidden: [8], seed: 11 }) saved to the context as ${name} (${fs.statSync(file).size} bytes, mode ${(fs.statSync(file).mode & 0o777).toString(8)}), --build-arg MODEL=${name}`);
  return info;
}

function applyDockerignore(ctx) {
  const dockerfile = path.resolve(repo, ctx.options.dockerfile);
  const beside = `${dockerfile}.dockerignore`;
  let file;
  if (fs.existsSync(beside)) file = beside;
  else if (fs.existsSync(path.join(ctx.contextDir, '.dockerignore'))) file = path.join(ctx.contextDir, '.dockerignore');
  ctx.ignoreFile = file ? (file.startsWith(repo + path.sep) ? path.relative(repo, file) : file) : 'no .dockerignore';
  if (!file) {
    note('no .dockerignore: the whole context is sent');
    return [];
  }
  const patterns = parseDockerignore(fs.readFileSync(file, 'utf8'), ctx.ignoreFile);
  const removed = [];
  const walk = (rel) => {
    const host = path.join(ctx.contextDir, rel);
    for (const name of fs.readdirSync(host)) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(host, name));
      if (dockerignored(r, patterns)) {
        // A negated pattern may re-include something below an excluded directory.
        if (st.isDirectory() && patterns.some((p) => p.negate)) {
          walk(r);
          if (fs.readdirSync(path.join(host, name)).length === 0) fs.rmdirSync(path.join(host, name));
          continue;
        }
        fs.rmSync(path.join(host, name), { recursive: true, force: true });
        removed.push(r + (st.isDirectory() ? '/' : ''));
      } else if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  note(`${ctx.ignoreFile}: ${patterns.length} pattern(s) (${file === beside ? '<Dockerfile>.dockerignore beside the Dockerfile, which BuildKit prefers' : 'the context root .dockerignore'}); excluded from this context: ${removed.length ? removed.join(', ') : 'nothing'}`);
  // What the same patterns do to this checkout's ignored files, which a `docker build .` here would send
  const ignored = spawnSync('git', ['-C', repo, 'ls-files', '--others', '--ignored', '--exclude-standard', '--directory'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  const sent = ignored.filter((p) => !dockerignored(p.replace(/\/$/, ''), patterns));
  if (sent.length) note(`note: a \`docker build\` from this working tree would also send these git-ignored paths, which ${ctx.ignoreFile} does not exclude: ${sent.join(', ')}`);
  return patterns;
}

// ---------------------------------------------------------------------------------------
// Serving

async function serve(ctx, stage, model, lib) {
  currentStep = 'start the ENTRYPOINT';
  if (!stage.entrypoint) fail(`the last stage (${stage.label}) has no ENTRYPOINT`);
  let argv = [...stage.entrypoint, ...(stage.cmd ?? [])];
  const exposed = stage.expose.find((e) => e.proto === 'tcp');
  if (!exposed) fail(`the last stage EXPOSEs no TCP port`);
  let port = exposed.port;
  const wanted = ctx.options.port ?? ((await portFree(exposed.port)) ? exposed.port : await freePort());
  if (wanted !== exposed.port) {
    const i = argv.findIndex((a, k) => (a === '--port' && argv[k + 1] === String(exposed.port)) || a === `--port=${exposed.port}`);
    if (i < 0) fail(`port ${exposed.port} is taken on this machine${ctx.options.port ? ' (or --port asked for another)' : ''}, and the ENTRYPOINT has no --port ${exposed.port} to change`);
    argv = [...argv];
    if (argv[i] === '--port') argv[i + 1] = String(wanted);
    else argv[i] = `--port=${wanted}`;
    log(`  PORT CHANGED: ${ctx.options.port ? `--port ${wanted} asked for` : `port ${exposed.port} is taken on this machine`}: serving on ${wanted} instead (the ENTRYPOINT's --port ${exposed.port} replaced; docker run -p ${wanted}:${exposed.port} would keep it)`);
  }
  port = wanted;
  const base = `http://127.0.0.1:${port}`;
  const { env, user } = stageEnv(ctx, stage, { withArgs: false });
  env.set('HOSTNAME', 'iaflow-deploy-check');
  const script = namespaceScript(ctx, stage, { argv, env, cwd: stage.workdir, user, hostname: 'iaflow-deploy-check' });
  const logFile = path.join(ctx.tmp, 'logs', 'entrypoint.log');
  fs.writeFileSync(logFile, '');
  const server = { logFile, exit: undefined };

  await step(`start the ENTRYPOINT: ${JSON.stringify(argv)} as USER ${stage.user} in ${stage.workdir}`, async () => {
    const child = spawn('unshare', [...UNSHARE, '/bin/sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    server.child = child;
    const out = fs.openSync(logFile, 'a');
    const write = (chunk) => fs.writeSync(out, chunk);
    child.stdout.on('data', write);
    child.stderr.on('data', write);
    server.exited = new Promise((resolve) =>
      child.on('close', (code, signal) => {
        children.delete(child);
        fs.closeSync(out);
        server.exit = { code, signal, at: Date.now() };
        resolve(server.exit);
      }),
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (server.exit) fail(`the ENTRYPOINT exited (${server.exit.signal ?? `code ${server.exit.code}`}) before serving:\n${tail(logFile, 40).join('\n')}`);
      if (Date.now() > deadline) fail(`nothing answered GET /health on ${base} within 60 s:\n${tail(logFile, 40).join('\n')}`);
      try {
        const r = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) });
        await r.arrayBuffer();
        break;
      } catch {
        await sleep(200);
      }
    }
    server.pid = forkedChild(child.pid);
    if (!server.pid) fail('cannot find the ENTRYPOINT process under unshare');
    const status = fs.readFileSync(`/proc/${server.pid}/status`, 'utf8');
    const field = (k) => (new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status) ?? [])[1]?.trim();
    const comm = fs.readFileSync(`/proc/${server.pid}/comm`, 'utf8').trim();
    const nspid = field('NSpid')?.split(/\s+/);
    const uid = field('Uid')?.split(/\s+/)[0];
    for (const l of tail(logFile, 5)) note(`| ${l}`);
    note(`process ${comm}: pid ${server.pid} here, pid ${nspid?.[nspid.length - 1]} in its namespace; uid ${uid} (USER ${stage.user} is ${user.uid}); hostname iaflow-deploy-check`);
    if (String(user.uid) !== uid) fail(`the ENTRYPOINT runs as uid ${uid}, not USER ${stage.user}'s ${user.uid}`);
  });
  try {
    await step('GET /health answers 200', async () => {
      const r = await fetch(`${base}/health`);
      const body = await r.text();
      note(`${r.status} ${body}`);
      if (r.status !== 200) fail(`GET /health: ${r.status} ${body}`);
    });
    await step(`GET /model gives the model's dim (${model.dim})`, async () => {
      const r = await fetch(`${base}/model`);
      const text = await r.text();
      let body;
      try {
        body = JSON.parse(text);
      } catch {
        fail(`GET /model: ${r.status}, not JSON: ${text.slice(0, 200)}`);
      }
      note(`${r.status}: dim ${body.dim}, contextDim ${body.contextDim}, ${body.numParameters} parameters, backend ${body.backend}, ${body.threads} threads`);
      if (r.status !== 200) fail(`GET /model: ${r.status} ${JSON.stringify(body)}`);
      if (body.dim !== model.dim) fail(`GET /model: dim ${body.dim}, expected ${model.dim}`);
      if (body.numParameters !== model.numParameters) fail(`GET /model: ${body.numParameters} parameters, the model has ${model.numParameters}`);
    });
    await step('POST /sample {"n": 5, "seed": 1} equals this process\'s flow.sample(5, { seed: 1 })', async () => {
      const r = await fetch(`${base}/sample`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json' }, body: JSON.stringify({ n: 5, seed: 1 }) });
      const text = await r.text();
      if (r.status !== 200) fail(`POST /sample: ${r.status} ${text}`);
      let rows;
      try {
        rows = JSON.parse(text);
      } catch {
        fail(`POST /sample: not JSON: ${text.slice(0, 200)}`);
      }
      note(`${r.status}, ${r.headers.get('content-type')}, x-iaflow-rows ${r.headers.get('x-iaflow-rows')}, x-iaflow-dim ${r.headers.get('x-iaflow-dim')}`);
      for (const row of rows.slice(0, 2)) note(`row ${JSON.stringify(row)}`);
      if (!Array.isArray(rows) || rows.length !== 5) fail(`POST /sample: expected 5 rows, got ${text.slice(0, 200)}`);
      rows.forEach((row, i) => {
        if (!Array.isArray(row) || row.length !== model.dim || !row.every((v) => typeof v === 'number')) fail(`POST /sample: row ${i} is ${JSON.stringify(row)}, expected ${model.dim} numbers`);
      });
      // The reference: the iaflow package installed in the image (what the ENTRYPOINT runs, built
      // from the same commit), loaded in this process, and its flow.sample on the same model file.
      const imageLib = require(ctx.imagePackage);
      const differ = async (library) => {
        const flow = await library.loadFlow(model.file);
        const expected = await flow.sample(5, { seed: 1 });
        flow.dispose();
        const diffs = [];
        rows.forEach((row, i) => row.forEach((v, j) => Object.is(Math.fround(v), expected[i * model.dim + j]) || diffs.push(`row ${i} col ${j}: served ${v}, flow.sample gives ${expected[i * model.dim + j]}`)));
        return diffs;
      };
      const diffs = await differ(imageLib);
      for (const d of diffs.slice(0, 5)) note(d);
      if (diffs.length) fail(`POST /sample: ${diffs.length} of ${5 * model.dim} values differ from flow.sample(5, { seed: 1 }) of the image's own iaflow package (${ctx.imagePackageInner}) loaded in this process`);
      note(`all ${5 * model.dim} values equal (as float32) flow.sample(5, { seed: 1 }) of the image's iaflow package (${ctx.imagePackageInner}) loaded in this process`);
      // And this checkout's library (dist/, build/): the same bits unless its sources differ from the commit built.
      const own = await differ(lib);
      const changed = spawnSync('git', ['-C', repo, 'status', '--porcelain', '--', 'native', 'src', 'binding.gyp', 'package.json', 'package-lock.json', 'scripts/build.js', 'tsconfig.json'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
      if (own.length === 0) note(`and equal this checkout's library (dist/ and its addon) too`);
      else if (changed.length) {
        note(`warning: this checkout's library (dist/, build/) gives ${own.length} different value(s), e.g. ${own[0]}; its sources have ${changed.length} uncommitted change(s) (${changed.slice(0, 4).map((l) => l.slice(3)).join(', ')}${changed.length > 4 ? ', ...' : ''}), which ${ctx.options.ref} and so the image do not have: not counted as a failure`);
      } else fail(`POST /sample: this checkout's library (dist/ and its addon, sources as ${ctx.options.ref}) gives ${own.length} different value(s) (${own[0]}): is build/ or dist/ stale? (npm run build:native && npm run build:ts)`);
    });
  } catch (error) {
    await stopServer(server);
    throw error;
  }
  const signal = stage.stopsignal ?? 'SIGTERM';
  await step(`STOPSIGNAL ${signal}${stage.stopsignal ? '' : ' (Docker\'s default)'}: the process exits with code 0 within 5 s`, async () => {
    const t = Date.now();
    process.kill(server.pid, signal);
    const exit = await Promise.race([server.exited, sleep(5000).then(() => undefined)]);
    if (!exit) {
      await stopServer(server);
      fail(`still running 5 s after ${signal} (docker stop would SIGKILL it after its 10 s grace):\n${tail(logFile, 20).join('\n')}`);
    }
    for (const l of tail(logFile, 3)) note(`| ${l}`);
    note(`exited ${exit.signal ? `on signal ${exit.signal}` : `with code ${exit.code}`} ${((exit.at - t) / 1000).toFixed(2)} s after ${signal}`);
    if (exit.signal || exit.code !== 0) fail(`after ${signal} the process exited ${exit.signal ? `on signal ${exit.signal}` : `with code ${exit.code}`}, not 0`);
  });
}

/** The iaflow package the last stage's ENTRYPOINT runs: a path among its arguments, up to its package.json. */
function findPackage(stage) {
  for (const arg of [...(stage.entrypoint ?? []), ...(stage.cmd ?? [])]) {
    if (!arg.startsWith('/')) continue;
    let inner = arg;
    while (inner !== '/') {
      const r = resolveIn(stage.root, path.posix.join(inner, 'package.json'));
      if (fs.existsSync(r.host)) {
        const pkg = JSON.parse(fs.readFileSync(r.host, 'utf8'));
        if (pkg.name === 'iaflow') return { host: path.dirname(r.host), inner, version: pkg.version };
      }
      inner = path.posix.dirname(inner);
    }
  }
  fail(`no argument of the ENTRYPOINT is a path inside an installed iaflow package of stage ${stage.label}`);
}

async function stopServer(server) {
  if (server.exit || !server.child) return;
  killNamespace(server.child);
  await Promise.race([server.exited, sleep(3000)]);
}

// ---------------------------------------------------------------------------------------

async function main() {
  process.umask(0o022);
  const options = parseOptions(process.argv.slice(2));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-deploy-check-'));
  const ctx = { options, tmp, contextDir: path.join(tmp, 'context'), extraBuildEnv: new Map() };
  const cleanup = () => {
    for (const child of children) killNamespace(child);
    if (options.keep) console.log(`temp dir kept: ${tmp}`);
    else fs.rmSync(tmp, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      console.log(`\ninterrupted (${sig}) at step "${currentStep}"`);
      cleanup();
      process.exit(1);
    });
  }
  console.log(`deploy-check: ${options.dockerfile} built and served without Docker (per-stage roots, unshare -m -p -u, chroot); temp dir ${tmp}`);
  try {
    currentStep = 'preflight';
    const skip = probeNamespaces(tmp);
    if (!skip) await step('preflight: mount namespaces, chroot, the base image stand-in', async () => {
      ctx.host = hostDescription();
      if (ctx.host.id !== 'debian' || ctx.host.version !== '12') fail(`this machine is ${ctx.host.pretty}, not Debian 12 (bookworm): it cannot stand in for node:20-bookworm`);
      if (process.versions.node.split('.')[0] !== '20') fail(`this machine's node is ${process.version}, not 20: it cannot stand in for node:20`);
      note(`base image stand-in: this machine's ${ctx.host.pretty}, node ${ctx.host.node}, npm ${ctx.host.npm}`);
      fs.mkdirSync(path.join(tmp, 'logs'));
      ctx.users = writeUserDatabase(tmp);
      note(`the stage's /etc/passwd and /etc/group: this machine's, with the node images' user node (${NODE_UID}:${NODE_UID}, /home/node)`);
      ctx.stub = path.join(tmp, 'not-in-slim-image');
      fs.writeFileSync(ctx.stub, '#!/bin/sh\necho "$0: not found (node:20-bookworm-slim has no compiler, make, python3 or git; hidden by deploy-check)" >&2\nexit 127\n', { mode: 0o755 });
      const hidden = new Set();
      ctx.slimHiddenNames = [];
      for (const tool of SLIM_HIDDEN) {
        for (const dir of IMAGE_PATH.split(':')) {
          const p = path.join(dir, tool);
          if (!fs.existsSync(p)) continue;
          const real = fs.realpathSync(p);
          if (!BASE_DIRS.some((d) => real.startsWith(`/${d}/`))) fail(`${p} resolves outside ${BASE_DIRS.join(', ')}: cannot hide it for the slim stand-in`);
          if (!ctx.slimHiddenNames.includes(tool)) ctx.slimHiddenNames.push(tool);
          hidden.add(real);
        }
      }
      ctx.slimHidden = [...hidden];
      // node-gyp would download Node's headers from nodejs.org, which this machine cannot reach: it
      // is pointed at this machine's (the same version's) instead.
      const headers = path.join(path.dirname(path.dirname(process.execPath)), 'include', 'node', 'node_api.h');
      if (fs.existsSync(headers)) {
        ctx.extraBuildEnv.set('npm_config_nodedir', path.dirname(path.dirname(path.dirname(headers))));
        note(`RUN steps get npm_config_nodedir=${ctx.extraBuildEnv.get('npm_config_nodedir')} (this machine's Node headers; in Docker node-gyp downloads them from nodejs.org)`);
      }
    });
    if (skip) {
      cleanup();
      if (options.allowSkip) {
        console.log(`skipped: the deploy check did not run, because ${skip}`);
        process.exit(0);
      }
      console.log(`FAIL at step "preflight": cannot run the Dockerfile's steps, because ${skip} (pass --allow-skip to skip instead)`);
      process.exit(1);
    }
    const dockerfile = path.resolve(repo, options.dockerfile);
    const parsed = await step(`parse ${options.dockerfile}`, async () => {
      const text = fs.readFileSync(dockerfile, 'utf8');
      const p = splitStages(parseDockerfile(text, options.dockerfile), options.dockerfile);
      note(`${p.stages.length} stage(s), ${p.stages.reduce((n, s) => n + s.instructions.length + 1, p.globals.length)} instruction(s)`);
      return p;
    });
    const lib = await step('load the library (dist/ of this checkout)', async () => {
      const entry = path.join(repo, 'dist', 'index.js');
      if (!fs.existsSync(entry)) fail('dist/index.js is missing: run npm run build:native and npm run build:ts first');
      return require(entry);
    });
    await step(`build context: committed files of ${options.ref}, a model, ${options.dockerfile}.dockerignore`, async () => {
      makeContext(ctx, lib);
      ctx.model = await makeModel(ctx, lib);
      applyDockerignore(ctx);
    });
    const last = await build(ctx, parsed);
    await step(`final image (stage ${last.label}): what it holds`, async () => {
      const pkg = findPackage(last);
      ctx.imagePackage = pkg.host;
      ctx.imagePackageInner = pkg.inner;
      const prebuilds = path.join(pkg.host, 'prebuilds');
      const list = fs.existsSync(prebuilds) ? spawnSync('find', [prebuilds, '-type', 'f'], { encoding: 'utf8' }).stdout.trim().split('\n').map((p) => path.relative(pkg.host, p)) : [];
      note(`the ENTRYPOINT's package ${pkg.inner}: version ${pkg.version}; prebuilds: ${list.length ? list.join(', ') : 'none'}; build/ ${fs.existsSync(path.join(pkg.host, 'build')) ? 'present (compiled at install)' : 'absent (the prebuild is what loads)'}`);
      note(`stage root ${duHuman(last.root)}; USER ${last.user}; WORKDIR ${last.workdir}; EXPOSE ${last.expose.map((e) => `${e.port}/${e.proto}`).join(' ')}; STOPSIGNAL ${last.stopsignal ?? '(default SIGTERM)'}`);
    });
    await serve(ctx, last, ctx.model, lib);
    currentStep = 'cleanup';
    cleanup();
    console.log(`${clock()} PASS: ${options.dockerfile} builds (${parsed.stages.length} stages, without Docker) and its image serves /health, /model and /sample, and stops on its STOPSIGNAL with code 0 (${since(started)})`);
    process.exit(0);
  } catch (error) {
    const message = error instanceof CheckError ? error.message : error?.stack ?? String(error);
    console.log(`${clock()} FAIL at step "${currentStep}": ${message}`);
    cleanup();
    process.exit(1);
  }
}

if (require.main === module) main();
else module.exports = { parseDockerfile, splitStages, parseDockerignore, dockerignored, words };
