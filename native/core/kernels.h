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
  // The parallel direction's affine head for positions [p0, p1): raw shift and scale are output
  // columns 2p, 2p + 1 of `head` applied to hT; outT[p] = inT[p] * scale + shift, logDet += log scale.
  void (*affine)(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0,
                 int p1, int scaleKind);
  // The sequential direction's heads, pushed: rawT (feature-major, started at the head's bias)
  // gets inputs [k0, k1) of hT (last hidden layer units already computed) added to columns
  // [c0, c1). A caller that pushes every column's inputs in index order gets the same multiply-adds
  // as `linear`'s sums (so a head summed step by step equals the parallel direction's, bit for
  // bit). Blocks of several columns: one position's two columns alone would read each input for
  // two multiply-adds only.
  void (*headPush)(const LinearView& head, const float* hT, float* rawT, int k0, int k1, int c0, int c1);
  // Position p's inverse affine step from its pushed sums (columns 2p, 2p + 1 of rawT):
  // outT[p] = (inT[p] - shift) / scale, logDet -= log scale.
  void (*solve)(const float* rawT, const float* inT, float* outT, float* logDet, int p, int scaleKind);
  // headPush for ONE row (raw: the row's sums, outStride floats), vectorised across columns,
  // with the same operations, so a row gives the same bits alone or in a tile.
  void (*headPushRow)(const LinearView& head, const float* h, float* raw, int k0, int k1, int c0, int c1);
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
