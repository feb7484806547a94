// Where the time goes when a target is missed: a sampling profile of this process with
// `perf record -e cpu-clock` (a software clock, so it works in VMs without hardware counters)
// while the bench keeps calling the workload, summarised by symbol. Native frames (iaflow.node,
// onnxruntime, libc/libm) resolve; JIT-compiled JavaScript shows as [unknown] or perf-PID.map
// addresses.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Call } from './timing';

export interface ProfileLine {
  percent: number;
  /** The shared object ([kernel.kallsyms], iaflow.node, libm.so.6, ...). */
  dso: string;
  symbol: string;
}

export interface Profile {
  samples: number;
  calls: number;
  lines: ProfileLine[];
}

let available: { ok: boolean; reason: string } | null = null;

/** Whether `perf record -e cpu-clock` works here (perf installed, perf_event_paranoid permits it). */
export function perfAvailable(): { ok: boolean; reason: string } {
  if (available) return available;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-perf-'));
  try {
    const r = spawnSync('perf', ['record', '-q', '-e', 'cpu-clock', '-o', path.join(dir, 'probe.data'), '--', 'true'], { encoding: 'utf8' });
    if (r.error) available = { ok: false, reason: `perf not found (${r.error.message})` };
    else if (r.status !== 0) available = { ok: false, reason: `perf record -e cpu-clock failed: ${(r.stderr || '').trim().split('\n')[0]}` };
    else available = { ok: true, reason: '' };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return available;
}

/**
 * Samples this process (every thread) for `seconds` while `call` runs back to back, then reports
 * the symbols above `minPercent` of the samples.
 */
export async function profileWhile(call: Call, seconds: number, minPercent = 1): Promise<Profile> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-perf-'));
  const data = path.join(dir, 'perf.data');
  try {
    const recorder = spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '1999', '-p', String(process.pid), '-o', data, '--', 'sleep', String(seconds)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    recorder.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let done = false;
    const finished = new Promise<number | null>((resolve) => recorder.on('close', (code) => ((done = true), resolve(code))));
    let calls = 0;
    while (!done) {
      await call();
      calls++;
      await new Promise((resolve) => setImmediate(resolve)); // let perf's exit be seen even when `call` is synchronous
    }
    const code = await finished;
    if (code !== 0 || !fs.existsSync(data)) throw new Error(`perf record exited with ${code}: ${stderr.trim().split('\n')[0]}`);
    const report = spawnSync('perf', ['report', '-i', data, '--stdio', '-F', 'overhead,dso,sym', '--percent-limit', String(minPercent)], {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    const text = report.stdout || '';
    const count = /^# Samples:\s*([\d.]+)([KM]?)/m.exec(text);
    const samples = count ? Number(count[1]) * ({ K: 1e3, M: 1e6 }[count[2]] ?? 1) : NaN;
    const lines: ProfileLine[] = [];
    for (const line of text.split('\n')) {
      const m = /^\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$/.exec(line);
      if (m) lines.push({ percent: Number(m[1]), dso: m[2], symbol: m[3].trim() });
    }
    return { samples, calls, lines };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A C++ symbol without its argument list and template arguments, short enough for a table. */
export function shortSymbol(symbol: string, max = 90): string {
  let s = symbol;
  for (let guard = 0; guard < 20 && /<[^<>]*>/.test(s); guard++) s = s.replace(/<[^<>]*>/g, '<>');
  s = s.replace(/\(.*\)( const)?$/, '');
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}
