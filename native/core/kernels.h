// The CPU compute kernels behind the CPU backend, one table per instruction
// set (AVX-512, AVX2+FMA, portable), chosen at run time. Activations are
// feature-major within a tile: xT[k * tileRows + r] is feature k of row r, so
// the vector dimension is the tile's rows and any range of units (a degree
// group in the sequential direction, everything in the parallel one) runs at
// full vector width.
#pragma once

#include <cstdint>

namespace iaflow {

// A staircase layer as the kernels read it (plan.h's StaircaseLinear, as raw pointers).
struct LinearView {
  const float* weightKM;  // [in][outStride]
  const float* bias;      // [outStride]
  const int* prefix;      // [out]: unit j reads inputs [0, prefix[j])
  int in;
  int out;
  int outStride;
  const float* rowStripes;          // plan.h's one-row copy: [stripe][k][kRowStripe]
  const int64_t* rowStripeOffset;   // [out / kRowStripe]
  const float* headPairs;           // a head's per-position pairs: [k][2] from headPairOffset[p]
  const int64_t* headPairOffset;    // [out / 2]
};

enum KernelActivation : int { kActNone = 0, kActReLU = 1, kActTanh = 2, kActELU = 3 };

struct KernelTable {
  const char* isa;
  int vectorFloats;  // floats per vector register
  int tileRows;      // rows per tile: every buffer holds tileRows values per feature
  // For units j in [lo, hi): s = bias[j] + sum_{k < prefix[j]} W[k][j] * xT[k], plus residualT[j]
  // when given; preActT[j] = s when given; yT[j] = act(s).
  void (*linear)(const LinearView& layer, const float* xT, float* yT, int lo, int hi, int activation,
                 const float* residualT, float* preActT);
  // The same for one row, row-major (for batches too small to fill a tile), vectorised across units.
  void (*linearRow)(const LinearView& layer, const float* x, float* y, int lo, int hi, int activation,
                    const float* residual, float* preAct);
  // The affine head for positions [p0, p1): raw shift and scale are output columns 2p, 2p + 1
  // of `head` applied to hT. Forward (the parallel direction): outT[p] = inT[p] * scale + shift,
  // logDet += log scale. Inverse (the sequential direction, one position at a time):
  // outT[p] = (inT[p] - shift) / scale, logDet -= log scale, with each raw sum split as
  // sequentialHeadSplit says (its two halves' chains interleave: one position's two columns alone
  // have too few independent sums to hide the FMA latency).
  void (*affine)(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0,
                 int p1, int scaleKind, bool inverse);
  // The sequential direction's head for ONE row: raw[2p], raw[2p + 1] from h, split as `affine`'s
  // inverse splits them, so a row alone gives its tile's bits.
  void (*sequentialHeadRow)(const LinearView& head, const float* h, float* raw, int p);
  // The affine step of ONE row for positions [p0, p1) (the one-row path), from the head's raw
  // outputs raw[2p] (shift) and raw[2p + 1] (scale), with `affine`'s per-element operations, so a
  // row gives the same bits whichever path (tile or row) runs it: a sample split in pieces of
  // any size equals one call. logDet accumulates in position order, as `affine` does per row.
  void (*affineRow)(const float* raw, const float* in, float* out, float* logDet, int p0, int p1, int scaleKind,
                    bool inverse);
  // Rows [firstRow, firstRow + rows) of the seed's standard-normal stream, row-major (rows x dim):
  // the values of flow_math.h's standardNormals4, bit for bit, many Philox blocks per vector.
  void (*normals)(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out);
};

// The sequential direction's head sums over inputs [0, depth) as two sums, over [0, split) (from
// the bias) and [split, depth) (from zero), added at the end; both paths (tile and row) use this split.
inline int sequentialHeadSplit(int depth) { return depth / 2; }

// The best table this CPU runs, unless overridden by selectKernels.
const KernelTable& activeKernels();
// Chooses a table by isa name ("avx512", "avx2", "portable"); returns false if this CPU cannot run it.
bool selectKernels(const char* isa);
// Names of the tables this CPU can run, best first, comma-separated.
const char* availableKernels();

const KernelTable* avx512Kernels();  // null where not compiled in
const KernelTable* avx2Kernels();
const KernelTable* portableKernels();

// ---- Training: the same instruction sets, built from train_kernels.h in the same files ----

enum class Direction : int;  // backend.h
namespace training {
struct Net;        // train_layout.h
struct Workspace;  // train_layout.h
}  // namespace training

struct TrainKernelTable {
  const char* isa;
  int vectorFloats;
  // A tile of rows (ws.points) through every layer of the net along `pass`; ws.logDet gets the
  // summed log-dets (train_kernels.h's netForward).
  void (*netForward)(const training::Net& net, training::Workspace& ws, int rows, Direction pass);
  // Its backward from ws.gpoints = dL/d(output): adds the parameter gradient to G when not null;
  // with wantInput, ws.gpoints ends as dL/d(input) (train_kernels.h's netBackward).
  void (*netBackward)(const training::Net& net, training::Workspace& ws, int rows, float gld, float* G,
                      bool wantInput, Direction pass);
};

// The training kernels of activeKernels()' instruction set: one switch (selectKernels) drives both.
const TrainKernelTable& activeTrainKernels();

const TrainKernelTable* avx512TrainKernels();  // null where not compiled in
const TrainKernelTable* avx2TrainKernels();
const TrainKernelTable* portableTrainKernels();

}  // namespace iaflow
