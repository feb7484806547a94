#include "plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

namespace iaflow {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("invalid flow spec: " + what);
}

void checkDense(const DenseLinear& m, int out, int in, const std::string& name) {
  require(m.out == out && m.in == in, name + " has the wrong shape");
  require(m.weight.size() == static_cast<size_t>(out) * in, name + ".weight has the wrong length");
  require(m.bias.size() == static_cast<size_t>(out), name + ".bias has the wrong length");
}

bool isPermutation(const std::vector<int>& values, int first, int count) {
  if (static_cast<int>(values.size()) != count) return false;
  std::vector<char> seen(count, 0);
  for (int v : values) {
    if (v < first || v >= first + count || seen[v - first]) return false;
    seen[v - first] = 1;
  }
  return true;
}

int roundUp(int value, int block) { return (value + block - 1) / block * block; }

// Packs one masked layer. `sourceOfInput[k]` is the original column of sorted
// input k; `sourceOfUnit[j]` the original row of sorted unit j.
StaircaseLinear packStaircase(const DenseLinear& dense, const std::vector<int>& sourceOfInput,
                              const std::vector<int>& sourceOfUnit, const std::vector<int>& prefix) {
  StaircaseLinear s;
  s.in = static_cast<int>(sourceOfInput.size());
  s.out = static_cast<int>(sourceOfUnit.size());
  s.outStride = roundUp(std::max(s.out, 1), kColumnBlock);
  s.weightKM.assign(static_cast<size_t>(s.in) * s.outStride, 0.0f);
  s.bias.assign(s.outStride, 0.0f);
  s.prefix = prefix;
  for (int j = 0; j < s.out; ++j) {
    const int row = sourceOfUnit[j];
    s.bias[j] = dense.bias[row];
    for (int k = 0; k < prefix[j]; ++k) {
      s.weightKM[static_cast<size_t>(k) * s.outStride + j] =
          dense.weight[static_cast<size_t>(row) * dense.in + sourceOfInput[k]];
    }
  }
  return s;
}

// Column ranges [lo, hi) of s.weightKM, one after another: each range's first prefix[hi - 1] rows
// of its columns, contiguous ([k][hi - lo]), from offsets[r] (at least lo, so that a view based at
// offsets[r] - lo, as the tiled kernels' views are, stays inside `data`). The packed copies of
// plan.h (rowStripes, groupWeights) are all made by it.
void packColumnRanges(const StaircaseLinear& s, const std::vector<std::pair<int, int>>& ranges, std::vector<float>& data,
                      std::vector<int64_t>& offsets) {
  data.clear();
  offsets.clear();
  for (const auto& [lo, hi] : ranges) {
    if (data.size() < static_cast<size_t>(lo)) data.resize(lo, 0.0f);
    offsets.push_back(static_cast<int64_t>(data.size()));
    for (int k = 0; hi > lo && k < s.prefix[hi - 1]; ++k) {
      const float* row = s.weightKM.data() + static_cast<size_t>(k) * s.outStride;
      data.insert(data.end(), row + lo, row + hi);
    }
  }
}

// StaircaseLinear::rowStripes: every whole stripe of kRowStripe units.
void packRowStripes(StaircaseLinear& s) {
  std::vector<std::pair<int, int>> stripes;
  for (int j0 = 0; j0 + kRowStripe <= s.out; j0 += kRowStripe) stripes.emplace_back(j0, j0 + kRowStripe);
  packColumnRanges(s, stripes, s.rowStripes, s.rowStripeOffset);
}

// StaircaseLinear::groupWeights of a hidden layer whose units of degree <= d number upTo[d].
void packDegreeGroups(StaircaseLinear& s, const std::vector<int>& upTo, int dim) {
  std::vector<std::pair<int, int>> groups;
  for (int p = 0; p < dim; ++p) groups.emplace_back(p == 0 ? 0 : upTo[p - 1], upTo[p]);
  packColumnRanges(s, groups, s.groupWeights, s.groupOffset);
}

// MadePlan::contextFirst and contextOnly from hidden layer 0 and the context layer (Linear form).
void foldContext(MadePlan& plan) {
  const StaircaseLinear& c = plan.context;
  const StaircaseLinear& h = plan.hidden[0];
  StaircaseLinear& both = plan.contextFirst;
  both.in = c.in + h.in;
  both.out = h.out;
  both.outStride = h.outStride;
  both.weightKM = c.weightKM;
  both.weightKM.insert(both.weightKM.end(), h.weightKM.begin(), h.weightKM.end());
  both.bias.resize(h.outStride);
  for (int j = 0; j < h.outStride; ++j) both.bias[j] = h.bias[j] + c.bias[j];
  both.prefix.resize(h.out);
  for (int j = 0; j < h.out; ++j) both.prefix[j] = c.in + h.prefix[j];
  plan.contextOnly = c;
  plan.contextOnly.bias = both.bias;
}

MadePlan buildMade(const LayerSpec& layer, int dim, int contextDim, const std::string& name) {
  require(isPermutation(layer.inputDegrees, 1, dim), name + ".inputDegrees must be a permutation of 1..dim");
  const size_t depth = layer.hidden.size();
  require(depth >= 1, name + " needs at least one hidden layer");
  require(layer.hiddenDegrees.size() == depth, name + ".hiddenDegrees needs one entry per hidden layer");

  if (layer.residual) {
    require(depth % 2 == 1 && depth >= 3, name + " (residual) needs 1 + 2 * blocks hidden layers");
    for (size_t l = 1; l < depth; ++l)
      require(layer.hiddenDegrees[l] == layer.hiddenDegrees[0],
              name + " (residual) needs the same degrees in every hidden layer");
  }
  require(contextDim > 0 || layer.contextForm == ContextForm::None, name + " has a context form but the flow has no context");
  MadePlan plan;
  plan.dim = dim;
  plan.residual = layer.residual;
  plan.parallelTowardData = layer.kind == LayerKind::IAF;
  require(std::isfinite(layer.softClamp) && layer.softClamp >= 0.0f, name + ".softClamp must be finite and >= 0");
  plan.softClampInv = layer.softClamp > 0.0f ? 1.0f / layer.softClamp : 0.0f;
  plan.activation = layer.activation;
  plan.scale = layer.scale;
  plan.dimAtPosition.resize(dim);
  for (int i = 0; i < dim; ++i) plan.dimAtPosition[layer.inputDegrees[i] - 1] = i;

  std::vector<int> previousSource = plan.dimAtPosition;  // sorted input -> original column
  std::vector<int> previousUpTo(dim + 1);                 // inputs of degree <= d: exactly d
  std::iota(previousUpTo.begin(), previousUpTo.end(), 0);
  int previousWidth = dim;
  for (size_t l = 0; l < depth; ++l) {
    const std::string lname = name + ".hidden." + std::to_string(l);
    const std::vector<int>& degrees = layer.hiddenDegrees[l];
    const int width = static_cast<int>(degrees.size());
    require(width >= 1, lname + " needs at least one unit");
    checkDense(layer.hidden[l], width, previousWidth, lname);
    for (int d : degrees) require(d >= 0 && d <= dim, lname + " degrees must lie in 0..dim");

    std::vector<int> order(width);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return degrees[a] < degrees[b]; });
    std::vector<int> prefix(width);
    for (int j = 0; j < width; ++j) prefix[j] = previousUpTo[degrees[order[j]]];
    plan.hidden.push_back(packStaircase(layer.hidden[l], previousSource, order, prefix));

    std::vector<int> upTo(dim + 1, 0);
    for (int d : degrees) upTo[d] += 1;
    for (int d = 1; d <= dim; ++d) upTo[d] += upTo[d - 1];
    if (l == 0 && contextDim > 0) {
      require(layer.contextForm == ContextForm::Linear || layer.contextForm == ContextForm::Activated,
              name + " needs a context form (the flow has a context)");
      checkDense(layer.context, width, contextDim, name + ".context");
      std::vector<int> contextColumns(contextDim);
      std::iota(contextColumns.begin(), contextColumns.end(), 0);
      plan.contextForm = layer.contextForm;
      plan.context = packStaircase(layer.context, contextColumns, order, std::vector<int>(width, contextDim));
      if (plan.contextForm == ContextForm::Linear) foldContext(plan);
    }
    plan.unitsUpToDegree.push_back(upTo);
    plan.unitSource.push_back(order);
    previousSource = order;
    previousUpTo = upTo;
    previousWidth = width;
  }

  checkDense(layer.shift, dim, previousWidth, name + ".shift");
  checkDense(layer.rawScale, dim, previousWidth, name + ".scale");
  // Interleave shift and scale rows per sorted position so the sequential
  // direction finds both outputs of one dimension side by side.
  DenseLinear merged;
  merged.out = 2 * dim;
  merged.in = previousWidth;
  merged.weight.resize(static_cast<size_t>(merged.out) * merged.in);
  merged.bias.resize(merged.out);
  std::vector<int> mergedRows(merged.out), prefix(merged.out);
  for (int p = 0; p < dim; ++p) {
    const int i = plan.dimAtPosition[p];
    for (int which = 0; which < 2; ++which) {
      const DenseLinear& src = which == 0 ? layer.shift : layer.rawScale;
      const int row = 2 * p + which;
      std::copy_n(src.weight.begin() + static_cast<size_t>(i) * merged.in, merged.in,
                  merged.weight.begin() + static_cast<size_t>(row) * merged.in);
      merged.bias[row] = src.bias[i];
      mergedRows[row] = row;
      prefix[row] = previousUpTo[p];  // output of degree p + 1 reads hidden units of degree <= p
    }
  }
  plan.output = packStaircase(merged, previousSource, mergedRows, prefix);
  return plan;
}

}  // namespace

std::shared_ptr<const FlowPlan> buildPlan(const FlowSpec& spec) {
  require(spec.dim >= 1, "dim must be at least 1");
  require(spec.contextDim >= 0, "contextDim must be at least 0");
  auto plan = std::make_shared<FlowPlan>();
  plan->dim = spec.dim;
  plan->contextDim = spec.contextDim;
  for (size_t k = 0; k < spec.layers.size(); ++k) {
    const LayerSpec& layer = spec.layers[k];
    const std::string name = "layers." + std::to_string(k);
    LayerPlan lp;
    lp.kind = layer.kind;
    if (layer.kind == LayerKind::Permutation) {
      require(isPermutation(layer.permutation, 0, spec.dim), name + ".permutation must be a permutation of 0..dim-1");
      lp.permutation = layer.permutation;
    } else if (layer.kind == LayerKind::Affine) {
      require(layer.affineLoc.size() == static_cast<size_t>(spec.dim) && layer.affineScale.size() == static_cast<size_t>(spec.dim),
              name + " needs dim entries of loc and of scale");
      double sum = 0.0;
      for (int i = 0; i < spec.dim; ++i) {
        require(std::isfinite(layer.affineLoc[i]), name + ".loc must be finite");
        require(std::isfinite(layer.affineScale[i]) && layer.affineScale[i] != 0.0f, name + ".scale must be finite and nonzero");
        sum += std::log(std::fabs(static_cast<double>(layer.affineScale[i])));
      }
      lp.affine.loc = layer.affineLoc;
      lp.affine.scale = layer.affineScale;
      lp.affine.logAbsScaleSum = static_cast<float>(sum);
      lp.affine.trainable = layer.trainable;
    } else {
      require(layer.kind == LayerKind::IAF || layer.kind == LayerKind::MAF, name + " has an unknown kind");
      lp.made = buildMade(layer, spec.dim, spec.contextDim, name);
      MadePlan& m = lp.made;
      for (StaircaseLinear& h : m.hidden) packRowStripes(h);
      for (StaircaseLinear* t : {&m.output, &m.context, &m.contextFirst, &m.contextOnly}) packRowStripes(*t);
      for (size_t l = 0; l < m.hidden.size(); ++l) packDegreeGroups(m.hidden[l], m.unitsUpToDegree[l], m.dim);
      if (!m.contextFirst.weightKM.empty()) packDegreeGroups(m.contextFirst, m.unitsUpToDegree[0], m.dim);
      for (const StaircaseLinear& h : lp.made.hidden) plan->widestHidden = std::max(plan->widestHidden, h.outStride);
      plan->deepestHidden = std::max(plan->deepestHidden, static_cast<int>(lp.made.hidden.size()));
    }
    plan->layers.push_back(std::move(lp));
  }
  return plan;
}

}  // namespace iaflow
