// What this machine can do: CPU model, clock, the measured fp32 ceiling at 1 and 2 threads, the
// theoretical peak, and whether its vCPUs give independent throughput (two single-threaded
// processes side by side versus one alone).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { NativeBinding } from '../src/native';

export interface CpuInfo {
  osModel: string;
  procModel: string | null;
  mhz: number | null;
  logicalCpus: number;
  flags: string[];
  family: number | null;
  model: number | null;
}

export function cpuInfo(): CpuInfo {
  let procModel: string | null = null;
  let mhz: number | null = null;
  let flags: string[] = [];
  let family: number | null = null;
  let model: number | null = null;
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    procModel = /^model name\s*:\s*(.*)$/m.exec(text)?.[1]?.trim() ?? null;
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(text);
    mhz = m ? Number(m[1]) : null;
    flags = (/^flags\s*:\s*(.*)$/m.exec(text)?.[1] ?? '').split(/\s+/);
    const fam = /^cpu family\s*:\s*(\d+)/m.exec(text);
    const mod = /^model\s*:\s*(\d+)/m.exec(text);
    family = fam ? Number(fam[1]) : null;
    model = mod ? Number(mod[1]) : null;
  } catch {
    // not Linux: os.cpus() only
  }
  const cpus = os.cpus();
  return { osModel: cpus[0]?.model ?? 'unknown', procModel, mhz: mhz ?? (cpus[0]?.speed || null), logicalCpus: os.availableParallelism?.() ?? cpus.length, flags, family, model };
}

/** The microarchitecture where /proc/cpuinfo tells it: AMD's families (Zen 4 is family 25 with AVX-512). */
export function microarchitecture(info: CpuInfo): string | null {
  if (!info.procModel?.includes('AMD')) return null;
  if (info.family === 26) return 'AMD Zen 5';
  if (info.family === 25) return info.flags.includes('avx512f') ? 'AMD Zen 4' : 'AMD Zen 3';
  if (info.family === 23) return 'AMD Zen 1/2';
  return null;
}

export interface Ceiling {
  size: number;
  /** Best GFLOP/s seen with 1 and with 2 pool threads over every measurement of the run. */
  gflops1: number;
  gflops2: number;
  /** The machine's measured fp32 ceiling: the better of the two. */
  best: number;
  samples1: number[];
  samples2: number[];
}

/**
 * Dense size^3 products with the project's best kernel (native.measureMatmulGflops), on 1 and
 * 2 pool threads. On a shared machine other work can only slow a measurement down, so the
 * ceiling is the best of many short measurements spread over the run (`measure` adds some).
 */
export class CeilingTracker {
  private readonly samples1: number[] = [];
  private readonly samples2: number[] = [];

  constructor(
    private readonly native: NativeBinding,
    readonly size: number,
    private readonly restoreThreads: number,
  ) {}

  measure(repeats: number, seconds: number): void {
    for (let r = 0; r < repeats; r++) {
      this.native.setThreads(1);
      this.samples1.push(this.native.measureMatmulGflops(this.size, seconds));
      this.native.setThreads(2);
      this.samples2.push(this.native.measureMatmulGflops(this.size, seconds));
    }
    this.native.setThreads(this.restoreThreads);
  }

  /** Adds measurements made elsewhere (the interleaved ceiling slots). */
  add(threads: 1 | 2, values: number[]): void {
    (threads === 1 ? this.samples1 : this.samples2).push(...values);
  }

  get ceiling(): Ceiling {
    const gflops1 = Math.max(...this.samples1);
    const gflops2 = Math.max(...this.samples2);
    return { size: this.size, gflops1, gflops2, best: Math.max(gflops1, gflops2), samples1: [...this.samples1], samples2: [...this.samples2] };
  }
}

/** vectorFloats x 2 (FMA) x 2 (FMA units per core, assumed) x cores x GHz. */
export function theoreticalPeak(vectorFloats: number, cores: number, mhz: number | null): number | null {
  return mhz ? vectorFloats * 2 * 2 * cores * (mhz / 1000) : null;
}

// A scalar JS loop: no memory traffic, one core's worth of integer/float work.
const SPIN = (iterations: number) =>
  `const t0=performance.now();let x=1;for(let i=0;i<${iterations};i++){x=(x*1664525+1013904223)%4294967296;}` +
  `const u=process.cpuUsage();process.stdout.write(JSON.stringify({s:(performance.now()-t0)/1e3,cpu:(u.user+u.system)/1e6,x}));`;

/** CPU seconds the bench's own children used (so the neighbour monitor can leave them out). */
let childCpuSeconds = 0;

/** Counts CPU time of a child process the bench started (the FMA probe, the numpy sgemm) as the bench's own. */
export function addChildCpuSeconds(seconds: number): void {
  if (Number.isFinite(seconds) && seconds > 0) childCpuSeconds += seconds;
}

/** user + system CPU seconds of a running process, from /proc (0 where there is no /proc). */
export function processCpuSeconds(pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
    // After "pid (comm) ": state is field 0, utime field 11, stime field 12 (man 5 proc), in clock ticks.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

function runSpin(iterations: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', SPIN(iterations)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`spin child exited with ${code}`));
      const result = JSON.parse(out) as { s: number; cpu: number };
      childCpuSeconds += result.cpu;
      resolve(result.s);
    });
  });
}

export interface Contention {
  aloneSeconds: number;
  pairSeconds: [number, number];
  /** 2 x alone / mean(pair): 2.0 = two independent cores, 1.0 = one core's worth shared. */
  effectiveCores: number;
}

/** One single-threaded spin process alone, then two at once; the fastest of `repeats` tries of each. */
export async function measureContention(targetSeconds: number, repeats: number): Promise<Contention> {
  // Calibrate the loop length in a child (same JIT as the measured runs).
  const probe = 2e7;
  const probeSeconds = await runSpin(probe);
  const iterations = Math.max(1e6, Math.round((probe * targetSeconds) / Math.max(probeSeconds, 1e-3)));
  let aloneSeconds = Infinity;
  let pair: [number, number] = [Infinity, Infinity];
  for (let r = 0; r < repeats; r++) {
    aloneSeconds = Math.min(aloneSeconds, await runSpin(iterations));
    const both = (await Promise.all([runSpin(iterations), runSpin(iterations)])) as [number, number];
    if (both[0] + both[1] < pair[0] + pair[1]) pair = both;
  }
  return { aloneSeconds, pairSeconds: pair, effectiveCores: (2 * aloneSeconds) / ((pair[0] + pair[1]) / 2) };
}

export function loadAverage(): string {
  return os.loadavg().map((v) => v.toFixed(2)).join(' ');
}

interface CpuTimes {
  busySeconds: number;
  stealSeconds: number;
  totalSeconds: number;
  ownSeconds: number;
}

function readCpuTimes(): CpuTimes | null {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number); // user nice system idle iowait irq softirq steal ...
    const hz = 100; // USER_HZ on Linux
    const busy = f[0] + f[1] + f[2] + f[5] + f[6];
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const own = process.cpuUsage();
    return { busySeconds: busy / hz, stealSeconds: (f[7] ?? 0) / hz, totalSeconds: total / hz, ownSeconds: (own.user + own.system) / 1e6 };
  } catch {
    return null;
  }
}

/** How much of the machine other processes used while the bench ran (Linux /proc/stat). */
export class NeighbourMonitor {
  private readonly start = readCpuTimes();

  summary(): string {
    const end = readCpuTimes();
    if (!this.start || !end) return 'unknown (no /proc/stat)';
    const total = end.totalSeconds - this.start.totalSeconds;
    const own = end.ownSeconds - this.start.ownSeconds + childCpuSeconds;
    const others = Math.max(0, end.busySeconds - this.start.busySeconds - own);
    const steal = end.stealSeconds - this.start.stealSeconds;
    const pct = (v: number) => `${((100 * v) / Math.max(total, 1e-9)).toFixed(0)}%`;
    return `other processes used ${others.toFixed(0)} CPU-seconds (${pct(others)} of all CPU time during the run) while the bench used ${own.toFixed(0)}; hypervisor steal ${pct(steal)}`;
  }
}
