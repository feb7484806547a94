#!/usr/bin/env bash
# The one prepared script for a session that is lent a GPU (issue 15): environment, build if
# needed, `test:gpu`, compute-sanitizer (memcheck, racecheck) on a small workload, `bench:gpu`,
# and a summary, each step timed and logged under "$OUT", each one continuing when another
# failed. The device machine has no network and (as far as the image's description goes) no
# Node.js: what it needs travels in .gpu-carry/, made here first by --pack (bench/README.md).
#
#   scripts/gpu-check.sh --pack          here, before the call: fill .gpu-carry/ (node, the
#                                        node_modules the steps need, the built addon and CUDA
#                                        library); .gitignore keeps it out of git
#   scripts/gpu-check.sh [--full]        on the device machine, from the repository root
#                                        (default: bench:gpu --quick; --full: the full bench)
#   scripts/gpu-check.sh --dry-run       print the plan and what is missing, run nothing long
#
# $OUT (set by the device tool; default ./gpu-out) receives at most eight files: summary.md,
# env.log, build.log, test-gpu.log, sanitizer.log, bench.md, bench.log, bench.json.
# GPU_CHECK_BUDGET (seconds, default 480) bounds the whole run; bench:gpu gets what is left.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
CARRY=.gpu-carry
MODE=quick
DRY=0
PACK=0
for arg in "$@"; do
  case "$arg" in
    --full) MODE=full ;;
    --quick) MODE=quick ;;
    --dry-run) DRY=1 ;;
    --pack) PACK=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $arg (--pack, --full, --quick, --dry-run)" >&2; exit 2 ;;
  esac
done

# ---------------------------------------------------------------- --pack (here, not on the GPU)

# The packages the GPU steps load, with everything they depend on: jest and ts-jest (test:gpu),
# typescript (ts-jest compiles the tests), tsx (bench:gpu, the sanitizer workload), node-gyp-build
# (loads the addon), the type packages the test config names.
PACK_ROOTS="jest ts-jest typescript tsx node-gyp-build @types/jest @types/node ${GPU_PACK_EXTRA:-}"

pack() {
  command -v node >/dev/null || { echo "gpu-check --pack: node is not on PATH" >&2; exit 1; }
  [ -d node_modules ] || { echo "gpu-check --pack: node_modules is missing: run npm ci first" >&2; exit 1; }
  rm -rf "$CARRY" && mkdir -p "$CARRY"  # (ignored by .gitignore: it travels only when carried)
  # The dependency closure of PACK_ROOTS, resolved as Node resolves (nested node_modules first).
  node -e '
    const fs = require("fs"), path = require("path");
    const root = process.cwd(), seen = new Set();
    const find = (name, from) => {
      for (let dir = from; ; dir = path.dirname(dir)) {
        const p = path.join(dir, "node_modules", name);
        if (fs.existsSync(path.join(p, "package.json"))) return p;
        if (dir === root || dir === path.dirname(dir)) return null;
      }
    };
    const visit = (dir) => {
      if (seen.has(dir)) return;
      seen.add(dir);
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
      for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies, ...pkg.peerDependencies })) {
        const found = find(dep, dir);
        if (found) visit(found);
      }
    };
    for (const name of process.argv.slice(1)) {
      const found = find(name, root);
      if (!found) { console.error("gpu-check --pack: node_modules has no " + name); process.exit(1); }
      visit(found);
    }
    for (const dir of [...seen].sort()) console.log(path.relative(root, dir));
  ' $PACK_ROOTS >"$CARRY/packages.txt" || exit 1
  # Each package without its nested node_modules (those are in the list themselves), plus .bin.
  while read -r dir; do find "$dir" -path "$dir/node_modules" -prune -o -print; done <"$CARRY/packages.txt" >"$CARRY/files.txt"
  [ -d node_modules/.bin ] && find node_modules/.bin >>"$CARRY/files.txt"
  tar -cf - --no-recursion -T "$CARRY/files.txt" | xz -T2 -6 >"$CARRY/node_modules.tar.xz" || exit 1
  rm -f "$CARRY/files.txt"
  # Node itself (the device image lists no Node.js): the binary of this machine, built for an
  # older glibc than the device image's.
  xz -T2 -6 -c "$(readlink -f "$(command -v node)")" >"$CARRY/node.xz" || exit 1
  node --version >"$CARRY/node-version.txt"
  # The built addon and the CUDA library, wherever the builds put them.
  find build build-cuda prebuilds \( -name '*.node' -o -name '*.so' -o -name '*.so.*' \) -type f -not -path '*/obj.target/*' -not -path '*/CMakeFiles/*' 2>/dev/null >"$CARRY/builds.txt"
  if [ -s "$CARRY/builds.txt" ]; then
    tar -cf - -T "$CARRY/builds.txt" | xz -T2 -6 >"$CARRY/builds.tar.xz"
  else
    echo "gpu-check --pack: no built addon or CUDA library found (npm run build:native, npm run build:cuda)" >&2
  fi
  echo "packed $CARRY ($(du -sh "$CARRY" | cut -f1)): $(wc -l <"$CARRY/packages.txt") packages, node $(cat "$CARRY/node-version.txt"), builds:"
  sed 's/^/  /' "$CARRY/builds.txt"
  local tree
  tree=$(( $(du -sb "$CARRY" | cut -f1) + $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) ))
  echo "what travels (tracked files + $CARRY): $(( tree / 1048576 )) MiB of the device tool's 64 MiB"
  [ "$tree" -lt $(( 64 * 1048576 )) ] || echo "gpu-check --pack: over 64 MiB: the call would be refused" >&2
  echo "device call: run(command: 'bash scripts/gpu-check.sh', carry: ['$CARRY'], timeout_s: 540)"
}

if [ "$PACK" = 1 ]; then
  pack
  exit 0
fi

# ---------------------------------------------------------------- the check (on the GPU machine)

OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
STEPS=""
elapsed() { echo $(( $(date +%s) - START )); }
note() { echo "$*" | tee -a "$OUT/env.log"; }

# step NAME LOG LIMIT CMD...: runs CMD under a time limit, appending to $OUT/LOG; records the result.
step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local t0 rc status
  t0=$(date +%s)
  echo "== $name: $* (limit ${limit} s, at $(elapsed) s)" | tee -a "$OUT/$log"
  if [ "$DRY" = 1 ]; then
    STEPS+="| $name | dry run: not run | 0 | $log |"$'\n'
    return 0
  fi
  # Through bash -c, so a step may be an exported function (run_script) as well as a program.
  timeout -s TERM -k 15 "$limit" bash -c '"$@"' _ "$@" >>"$OUT/$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after $limit s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "== $name: $status in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/$log"
  STEPS+="| $name | $status | $(( $(date +%s) - t0 )) | $log |"$'\n'
  return $rc
}
skip() { # skip NAME LOG WHY
  echo "== $1: skipped ($3)" | tee -a "$OUT/$2"
  STEPS+="| $1 | skipped: $3 | 0 | $2 |"$'\n'
}

# A package.json script, through npm where it is, else its command line with node_modules/.bin on PATH.
has_script() { node -e 'process.exit(require("./package.json").scripts?.[process.argv[1]] ? 0 : 1)' "$1" 2>/dev/null; }
run_script() {
  local name=$1
  shift
  if command -v npm >/dev/null; then
    npm run --silent "$name" -- "$@"
  else
    local cmd
    cmd=$(node -e 'console.log(require("./package.json").scripts[process.argv[1]])' "$name") || return 3
    PATH="$ROOT/node_modules/.bin:$PATH" bash -c "$cmd"' "$@"' _ "$@"
  fi
}
export -f run_script
export ROOT

: >"$OUT/env.log"
note "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ), mode $MODE$([ "$DRY" = 1 ] && echo ', dry run'), budget $BUDGET s"
note "## nvidia-smi"
if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | tee -a "$OUT/env.log" >/dev/null; DEVICE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
else note "nvidia-smi not found: this machine has no NVIDIA driver"; DEVICE="none (no nvidia-smi)"; fi
note "## nvcc"
if command -v nvcc >/dev/null; then nvcc --version 2>&1 | tail -2 | tee -a "$OUT/env.log" >/dev/null; else note "nvcc not found"; fi
note "## compute-sanitizer: $(command -v compute-sanitizer || echo 'not found')"
note "## python3 torch: $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1)"

# Node: this machine's, or the one --pack carried.
if ! command -v node >/dev/null && [ -f "$CARRY/node.xz" ]; then
  mkdir -p /tmp/iaflow-node/bin && xz -dc "$CARRY/node.xz" >/tmp/iaflow-node/bin/node && chmod +x /tmp/iaflow-node/bin/node
  export PATH=/tmp/iaflow-node/bin:$PATH
  note "node: unpacked from $CARRY/node.xz"
fi
if command -v node >/dev/null; then
  NODE_OK=1
  note "## node $(node --version) at $(command -v node); npm $(npm --version 2>/dev/null || echo 'not found (package scripts run through bash)')"
else
  NODE_OK=0
  note "## node: NOT FOUND, and no $CARRY/node.xz: nothing JavaScript can run (run scripts/gpu-check.sh --pack before the call and name $CARRY in carry)"
fi

# node_modules: carried, else npm ci (offline: works only from a filled npm cache).
if [ "$NODE_OK" = 1 ] && [ ! -e node_modules/.bin/tsx ]; then
  if [ -f "$CARRY/node_modules.tar.xz" ]; then
    tar -xJf "$CARRY/node_modules.tar.xz" && note "node_modules: unpacked from $CARRY/node_modules.tar.xz ($(wc -l <"$CARRY/packages.txt") packages)"
  elif command -v npm >/dev/null && [ "$DRY" = 0 ]; then
    note "node_modules: MISSING and not carried; trying npm ci --offline (the device machine has no network)"
    step "npm ci --offline" build.log 120 npm ci --offline --no-audit --no-fund --ignore-scripts
  else
    note "node_modules: MISSING and not carried ($CARRY/node_modules.tar.xz): the JavaScript steps will fail"
  fi
fi
# The addon and the CUDA library: carried builds fill the paths that are missing.
if [ -f "$CARRY/builds.tar.xz" ]; then
  while read -r f; do
    [ -e "$f" ] || { tar -xJf "$CARRY/builds.tar.xz" "$f" && note "restored $f from $CARRY/builds.tar.xz"; }
  done <"$CARRY/builds.txt"
fi
CUDA_LIB=$(find build-cuda build prebuilds -name 'libiaflow_cuda*.so*' -type f 2>/dev/null | head -1)
note "CUDA library: ${CUDA_LIB:-none found (build-cuda/, build/, prebuilds/)}"
note "addon: $(find build/Release prebuilds -name '*.node' -type f -not -path '*/obj.target/*' 2>/dev/null | head -1)"

if [ "$NODE_OK" = 1 ]; then
  if [ -z "$CUDA_LIB" ]; then
    if has_script build:cuda; then step "build:cuda" build.log 240 run_script build:cuda
    else skip "build:cuda" build.log "package.json has no build:cuda script"; fi
  else
    skip "build:cuda" build.log "already built: $CUDA_LIB"
  fi
  note "## backends(): $(timeout 60 node --import tsx -e 'const { backends } = require("./src/index"); console.log(JSON.stringify(backends().map((b) => [b.name, b.usable, b.whyNot || b.detail])))' 2>&1 | tail -3)"

  if has_script test:gpu; then step "test:gpu" test-gpu.log 150 run_script test:gpu
  else skip "test:gpu" test-gpu.log "package.json has no test:gpu script"; fi

  if command -v compute-sanitizer >/dev/null; then
    : >"$OUT/sanitizer.log"
    # application-only: the tracked process is node itself (tsx's esbuild service never touches CUDA).
    IAFLOW_SANITIZE_ROWS=300 step "compute-sanitizer memcheck" sanitizer.log 75 \
      compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 --target-processes application-only node --import tsx scripts/gpu-sanitize.ts
    IAFLOW_SANITIZE_ROWS=100 step "compute-sanitizer racecheck" sanitizer.log 90 \
      compute-sanitizer --tool racecheck --error-exitcode 3 --print-limit 20 --target-processes application-only node --import tsx scripts/gpu-sanitize.ts
  else
    skip "compute-sanitizer" sanitizer.log "compute-sanitizer is not on PATH"
  fi

  # bench:gpu, run as `node --import tsx` (what `npm run bench:gpu` runs, in one process) so the
  # time limit's SIGTERM reaches it: it then prints the report of what it measured so far.
  LEFT=$(( BUDGET - $(elapsed) - 15 ))
  [ "$LEFT" -gt 120 ] || LEFT=120
  BENCH_ARGS=(--json "$OUT/bench.json" --budget $(( LEFT - 20 )))
  [ "$MODE" = quick ] && BENCH_ARGS+=(--quick)
  echo "== bench:gpu: node --import tsx bench/gpu.ts ${BENCH_ARGS[*]} (limit $LEFT s)" | tee -a "$OUT/bench.log"
  if [ "$DRY" = 1 ]; then
    STEPS+="| bench:gpu | dry run: not run | 0 | bench.md, bench.log |"$'\n'
  else
    t0=$(date +%s)
    timeout -s TERM -k 20 "$LEFT" node --import tsx bench/gpu.ts "${BENCH_ARGS[@]}" >"$OUT/bench.md" 2>>"$OUT/bench.log"
    rc=$?
    case $rc in 0) status=ok ;; 124|137|143) status="stopped at the $LEFT s limit (partial report)" ;; *) status="failed (exit $rc)" ;; esac
    STEPS+="| bench:gpu | $status | $(( $(date +%s) - t0 )) | bench.md, bench.log, bench.json |"$'\n'
  fi
else
  skip "build:cuda, test:gpu, compute-sanitizer, bench:gpu" env.log "no node"
fi

# ---------------------------------------------------------------- summary

{
  echo "# iaflow GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo "- device: ${DEVICE}"
  echo "- mode: $MODE$([ "$DRY" = 1 ] && echo ' (dry run)'); total $(elapsed) s of a $BUDGET s budget"
  echo "- node: $(node --version 2>/dev/null || echo none); nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none); CUDA library: ${CUDA_LIB:-none}"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
  printf '%s' "$STEPS"
  echo
  if [ -s "$OUT/test-gpu.log" ]; then
    echo "## test:gpu"
    echo
    grep -E '^(Tests|Test Suites):|skipped|[0-9]+ passed|[0-9]+ failed' "$OUT/test-gpu.log" | tail -6 | sed 's/^/    /'
    echo
  fi
  if [ -s "$OUT/sanitizer.log" ]; then
    echo "## compute-sanitizer"
    echo
    grep -E '== (compute-sanitizer|ERROR SUMMARY)|ERROR SUMMARY|RACECHECK SUMMARY|sanitizer workload|^FAIL|no usable' "$OUT/sanitizer.log" | sed 's/^/    /'
    echo
  fi
  if [ -s "$OUT/bench.md" ]; then
    echo "## bench:gpu"
    echo
    grep -v '^<!-- bench/gpu.ts' "$OUT/bench.md"
  elif [ -s "$OUT/bench.log" ]; then
    echo "## bench:gpu (no report; the end of its log)"
    echo
    tail -20 "$OUT/bench.log" | sed 's/^/    /'
  fi
} >"$OUT/summary.md"
echo "gpu-check: done in $(elapsed) s; $OUT/summary.md"
cat "$OUT/summary.md" | head -40
