#!/usr/bin/env python3
"""The PyTorch peer of bench/gpu.ts: a masked-linear MADE IAF/MAF in plain torch, timed on the GPU.

    python3 bench/gpu_torch_peer.py SPEC.json [--device cuda|cpu]   ->  one line of JSON on stdout

SPEC.json (written by bench/gpu.ts):
    {"seconds": 1.0, "maxCallSeconds": 2.0, "sgemm": 8192, "deadlineSeconds": 300,
     "cells": [{"name": "CFG-E IAF sample", "dim": 64, "batch": 1048576, "direction": "toData",
                "compile": true, "layers": [{"type": "iaf", "inputDegrees": [...],
                "hiddenDegrees": [[...], [...]]}, {"type": "permutation", "permutation": [...]}, ...]}]}

The network is iaflow's (docs/DESIGN.md), written the way a torch user would: the MADE masks
multiplied into the weights once, so every product is a dense addmm (the masked zeros are
computed); relu hidden layers; one [H, 2D] head split into the shift m and the raw scale a;
iaflow's 'exp' scale with its soft clip a' = a / (1 + |a| / ln 1e3) (flow_math.h), scale =
exp(a'). The parallel direction of a layer is one pass, v = u * exp(a') + m; the sequential one
is the D-pass inverse (u starts at 0; each pass recomputes the network on the current u and sets
u = (v - m) * exp(-a'): after pass k the inputs of degree <= k are exact). Weights follow
bench/network.ts's randomParameters (He-uniform hidden layers, heads +-0.2/sqrt(H), scale bias
+-0.2), so the sequential direction stays bounded.

Timing: inputs resident on the device (z for sampling, x for densities), torch.cuda.synchronize
around each call, warm-up calls first, then calls for `seconds`: rows / median call time. A
batch whose call would take over maxCallSeconds is reduced (reported as rows). Each cell also
tries torch.compile (the whole parallel pass, or one network pass inside the Python loop of the
sequential direction) and reports the faster. With "sgemm", the device's torch.matmul n^3 rate
with TF32 off (the fp32 sgemm ceiling) and on (TF32 tensor cores).

No torch, or no CUDA device with --device cuda: {"available": false, "reason": ...} and exit 0.
"""
import argparse
import json
import math
import statistics
import sys
import time

EXP_SOFT_CLIP = math.log(1e3)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
HEAD_GAIN = 0.2


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('spec', help='the cells to time (JSON, written by bench/gpu.ts)')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='cpu: a smoke test without a GPU')
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure means no peer
        emit({'available': False, 'reason': f'python3 cannot import torch ({type(error).__name__}: {error})'})
        return
    if args.device == 'cuda' and not torch.cuda.is_available():
        emit({'available': False, 'reason': f'torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)'})
        return
    device = torch.device(args.device)
    # fp32 everywhere: no TF32 in products or convolutions (the sgemm below turns it on for its second figure).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision('highest')
    torch.set_grad_enabled(False)

    out = {
        'available': True,
        'torch': torch.__version__,
        'device': torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu',
        'cuda': torch.version.cuda,
        'cells': [],
    }
    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    started_all = time.perf_counter()
    deadline = float(spec.get('deadlineSeconds', 1e9))
    seconds = float(spec.get('seconds', 1.0))
    max_call = float(spec.get('maxCallSeconds', 2.0))
    if spec.get('sgemm'):
        # A CPU smoke test multiplies a small matrix: the figure is not a ceiling there.
        n = int(spec['sgemm']) if args.device == 'cuda' else min(int(spec['sgemm']), 512)
        out['sgemm'] = sgemm(torch, device, sync, n, seconds)
    for cell in spec['cells']:
        started = time.perf_counter()
        left = deadline - (started - started_all)
        if left < 5:
            out['cells'].append({'name': cell['name'], 'error': 'skipped: the time budget ran out'})
            continue
        if left < 90:
            cell = {**cell, 'compile': False}  # a compile takes tens of seconds
        try:
            result = time_cell(torch, device, sync, cell, seconds, max_call)
        except Exception as error:  # noqa: BLE001 - one failed cell must not lose the others
            result = {'name': cell['name'], 'error': f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'}
            if args.device == 'cuda':
                torch.cuda.empty_cache()
        result['wallSeconds'] = time.perf_counter() - started
        out['cells'].append(result)
        print(f'[torch peer] {cell["name"]}: {json.dumps(result)}', file=sys.stderr, flush=True)
    emit(out)


def timed(fn, sync, seconds, warmup=2, min_calls=3):
    """Median seconds of one call, after `warmup` calls; calls until `seconds` have passed."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_calls and times[-1] > seconds:
            break
    return statistics.median(times), len(times)


def sgemm(torch, device, sync, n, seconds):
    """torch.matmul on [n, n] x [n, n], TF32 off (the fp32 sgemm ceiling) and on."""
    result = {'size': n}
    gen = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    c = torch.empty(n, n, device=device)
    for name, tf32 in (('fp32', False), ('tf32', True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.set_float32_matmul_precision('high' if tf32 else 'highest')
        s, calls = timed(lambda: torch.matmul(a, b, out=c), sync, min(seconds, 1.0))
        result[name] = {'gflops': 2.0 * n ** 3 / s / 1e9, 'calls': calls}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision('highest')
    return result


class Made:
    """One MADE layer: masks multiplied into the weights once, weights stored [in, out] for addmm."""

    def __init__(self, torch, device, gen, layer, dim):
        self.kind = layer['type']
        self.dim = dim
        input_deg = torch.tensor(layer['inputDegrees'], dtype=torch.int64)
        degrees = [torch.tensor(d, dtype=torch.int64) for d in layer['hiddenDegrees']]
        self.hidden = []
        self.macs = 0
        prev = input_deg
        for deg in degrees:
            mask = (prev[:, None] <= deg[None, :]).float()  # [in, out]
            bound = math.sqrt(6.0 / max(1.0, prev.numel() / 2.0))
            w = (torch.rand(prev.numel(), deg.numel(), generator=gen) * 2 - 1) * bound * mask
            b = (torch.rand(deg.numel(), generator=gen) * 2 - 1) * 0.1
            self.hidden.append((w.to(device).contiguous(), b.to(device)))
            self.macs += int(mask.sum().item())
            prev = deg
        mask = (prev[:, None] < input_deg[None, :]).float()  # [H, D]
        bound = HEAD_GAIN / math.sqrt(prev.numel())
        shift_w = (torch.rand(prev.numel(), dim, generator=gen) * 2 - 1) * bound * mask
        scale_w = (torch.rand(prev.numel(), dim, generator=gen) * 2 - 1) * bound * mask
        shift_b = (torch.rand(dim, generator=gen) * 2 - 1) * 0.1
        scale_b = (torch.rand(dim, generator=gen) * 2 - 1) * 0.2  # raw scale 0 is scale 1 for 'exp'
        self.head_w = torch.cat([shift_w, scale_w], dim=1).to(device).contiguous()
        self.head_b = torch.cat([shift_b, scale_b]).to(device)
        self.macs += 2 * int(mask.sum().item())
        self.params = [t for pair in self.hidden for t in pair] + [self.head_w, self.head_b]


def network_pass(torch, u, *params):
    """One MADE pass: (shift m, soft-clipped raw scale a'). params: hidden (w, b) pairs, then the head's w, b."""
    h = u
    for k in range(0, len(params) - 2, 2):
        h = torch.relu(torch.addmm(params[k + 1], h, params[k]))
    out = torch.addmm(params[-1], h, params[-2])
    dim = out.shape[1] // 2
    m, a = out[:, :dim], out[:, dim:]
    return m, a / (1.0 + a.abs() / EXP_SOFT_CLIP)


def build_flow(torch, device, cell):
    gen = torch.Generator().manual_seed(20261125)
    dim = cell['dim']
    layers = []
    for layer in cell['layers']:
        if layer['type'] == 'permutation':
            perm = torch.tensor(layer['permutation'], dtype=torch.int64)
            layers.append(('perm', perm.to(device), torch.argsort(perm).to(device)))
        elif layer['type'] in ('iaf', 'maf'):
            layers.append(('made', Made(torch, device, gen, layer, dim)))
        else:
            raise ValueError(f'the torch peer implements MADE and permutation layers only, not {layer["type"]}')
    return layers


def flow_function(torch, layers, direction, dim, net):
    """The whole flow in `direction` as fn(input) -> outputs. net(u, *params) is one MADE pass (eager or compiled)."""
    ordered = layers if direction == 'toData' else list(reversed(layers))

    def run(inp):
        u = inp
        log_det = torch.zeros(inp.shape[0], device=inp.device)
        for layer in ordered:
            if layer[0] == 'perm':
                # toData: b[i] = a[perm[i]]; toLatent: a = b[inverse].
                u = u[:, layer[1]] if direction == 'toData' else u[:, layer[2]]
                continue
            made = layer[1]
            parallel = (direction == 'toData') == (made.kind == 'iaf')
            if parallel:
                m, a = net(u, *made.params)
                u = u * torch.exp(a) + m
                log_det = log_det + a.sum(1)
            else:
                v = u
                u = torch.zeros_like(v)
                for _ in range(dim):
                    m, a = net(u, *made.params)
                    u = (v - m) * torch.exp(-a)
                log_det = log_det - a.sum(1)
        base = -0.5 * (u * u).sum(1) - dim * HALF_LOG_2PI if direction == 'toLatent' else -0.5 * (inp * inp).sum(1) - dim * HALF_LOG_2PI
        if direction == 'toData':
            return u, base - log_det  # x, log q(x)
        return base + log_det  # log p(x)

    return run


def choose_rows(fn_for, nominal, max_call, sync):
    """The configuration's batch, or the largest that one call fits in max_call (grown from 256 rows)."""
    rows = min(nominal, 256)
    fn = fn_for(rows)
    fn()
    sync()
    while True:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        s = time.perf_counter() - t0
        if rows >= nominal or s > max_call / 8:
            break
        rows = min(nominal, rows * max(2, min(16, int(max_call / 8 / max(s, 1e-6)))))
        fn = fn_for(rows)
    if rows == nominal and s <= max_call:
        return rows
    fit = int(max_call / (s / rows))
    return max(256, min(nominal, fit - fit % 256))


def time_cell(torch, device, sync, cell, seconds, max_call):
    dim = cell['dim']
    direction = cell['direction']
    layers = build_flow(torch, device, cell)
    made = [layer[1] for layer in layers if layer[0] == 'made']
    gen = torch.Generator(device=device).manual_seed(7)
    eager = flow_function(torch, layers, direction, dim, lambda u, *p: network_pass(torch, u, *p))
    nominal = int(cell['batch'])

    def inputs(rows):
        z = torch.randn(rows, dim, device=device, generator=gen)
        if direction == 'toData':
            return z
        # Densities of points the flow could have drawn: IAF samples come from its parallel
        # direction; for a MAF (whose sampling is the slow direction) the work does not depend on
        # the values, so x is N(0, I).
        if all(m.kind == 'iaf' for m in made):
            return flow_function(torch, layers, 'toData', dim, lambda u, *p: network_pass(torch, u, *p))(z)[0]
        return z

    def fn_for(rows):
        x = inputs(rows)
        return lambda: eager(x)

    rows = choose_rows(fn_for, nominal, max_call, sync)
    x = inputs(rows)
    result = {
        'name': cell['name'],
        'rows': rows,
        'maskedMacsPerRow': sum(m.macs for m in made),
    }
    s, calls = timed(lambda: eager(x), sync, seconds)
    result['eager'] = {'rowsPerSec': rows / s, 'seconds': s, 'calls': calls}
    best = ('eager', eager, rows / s)
    if cell.get('compile'):
        try:
            started = time.perf_counter()
            sequential = any((direction == 'toData') != (m.kind == 'iaf') for m in made)
            if sequential:
                # The D-pass loop stays in Python: compiling it whole would unroll D x layers passes.
                compiled_net = torch.compile(lambda u, *p: network_pass(torch, u, *p), dynamic=False)
                compiled = flow_function(torch, layers, direction, dim, compiled_net)
            else:
                compiled = torch.compile(eager, dynamic=False)
            compiled(x)
            sync()
            compile_seconds = time.perf_counter() - started
            s, calls = timed(lambda: compiled(x), sync, seconds)
            result['compiled'] = {'rowsPerSec': rows / s, 'seconds': s, 'calls': calls, 'compileSeconds': compile_seconds,
                                  'what': 'one network pass' if sequential else 'the whole pass'}
            if rows / s > best[2]:
                best = ('compiled', compiled, rows / s)
            # Same function? The compiled pass against the eager one on the first rows.
            a = eager(x[:256])
            b = compiled(x[:256])
            a = a[1] if isinstance(a, tuple) else a
            b = b[1] if isinstance(b, tuple) else b
            result['compiled']['maxAbsDiffLogProb'] = float((a - b).abs().max().item())
        except Exception as error:  # noqa: BLE001 - no compiler, no triton: eager stays
            result['compiled'] = {'error': f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'}
    result['best'] = best[0]
    result['rowsPerSec'] = best[2]
    # With host copies, as iaflow's Float32Array calls pay them: pinned host input in, outputs back.
    if device.type == 'cuda':
        host = x.cpu().pin_memory()
        fn = best[1]

        def with_copies():
            outputs = fn(host.to(device, non_blocking=True))
            if isinstance(outputs, tuple):
                return [o.cpu() for o in outputs]
            return outputs.cpu()

        s, calls = timed(with_copies, sync, min(seconds, 1.0), warmup=1)
        result['withCopies'] = {'rowsPerSec': rows / s, 'calls': calls}
    del x
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


if __name__ == '__main__':
    main()
