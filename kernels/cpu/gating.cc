#include "kernels/cpu/gating.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/common/error.h"
#include "kernels/common/ranking.h"
#include "kernels/cpu/thread_pool.h"

// Precision: logits are read as float32 and scores (softmax, sigmoid, sqrt-softplus)
// are float32 values; softmax sums are accumulated in double and the division is done
// in double before rounding to float32. Sinkhorn's balancing matrix is kept in double.
// Every ranking uses one strict total order: value descending with NaN after every
// number (-inf included), then id ascending. So ties go to the lower id, and a row
// with fewer than k orderable values fills the remaining picks with the lowest unused ids.

namespace moekit::cpu {

namespace {

constexpr int64_t kRowGrain = 64;  // rows per parallel_for chunk (at least)
constexpr int64_t kSinkhornBlock = 64;  // rows per fixed Sinkhorn column-sum block
// NOTE: insertion into a sorted k-list is O(E) per row for the usual small k (most
// candidates are rejected by one compare with the current k-th); past this k a
// partial sort (O(E log k)) is used instead.
constexpr int64_t kInsertionTopkMax = 32;
constexpr float kRenormEps = 1e-20f;

// Indices of the k best entries of v[0, n) (1 <= k <= n), best first.
// out: [k]; scratch: [n], used only when k > kInsertionTopkMax.
template <typename T>
void select_topk(const T* v, int64_t n, int64_t k, int32_t* out, int32_t* scratch) {
  if (k <= kInsertionTopkMax) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (count == k) {
        const int32_t worst = out[k - 1];
        if (!ranks_before(v[i], i, v[worst], worst)) continue;
      } else {
        ++count;
      }
      // Insert i into the sorted out[0, count), dropping the old k-th when full.
      int64_t pos = count - 1;
      while (pos > 0 && ranks_before(v[i], i, v[out[pos - 1]], out[pos - 1])) {
        out[pos] = out[pos - 1];
        --pos;
      }
      out[pos] = static_cast<int32_t>(i);
    }
    return;
  }
  std::iota(scratch, scratch + n, 0);
  std::partial_sort(scratch, scratch + k, scratch + n,
                    [v](int32_t a, int32_t b) { return ranks_before(v[a], a, v[b], b); });
  std::copy(scratch, scratch + k, out);
}

// x: [cols] <- logits row t as float32, plus logit_bias when given.
void read_logits_row(const GatingParams& p, int64_t t, int64_t cols, float* x) {
  const int64_t base = t * cols;
  switch (p.logits_dtype) {
    case DType::kF32:
      std::memcpy(x, static_cast<const float*>(p.logits) + base, static_cast<size_t>(cols) * 4);
      break;
    case DType::kF16: {
      const uint16_t* src = static_cast<const uint16_t*>(p.logits) + base;
      for (int64_t c = 0; c < cols; ++c) x[c] = f16_to_float(src[c]);
      break;
    }
    case DType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(p.logits) + base;
      for (int64_t c = 0; c < cols; ++c) x[c] = bf16_to_float(src[c]);
      break;
    }
    default:
      fail(code::kInternal, "gating: unsupported logits dtype");
  }
  if (p.logit_bias != nullptr) {
    for (int64_t c = 0; c < cols; ++c) x[c] += p.logit_bias[c];
  }
  // Infinite logits are clamped to the largest finite float (see gating_params.h).
  constexpr float kMax = std::numeric_limits<float>::max();
  for (int64_t c = 0; c < cols; ++c) {
    if (std::isinf(x[c])) x[c] = x[c] > 0 ? kMax : -kMax;
  }
}

// out: [n] <- softmax of x[0, n) (max subtracted; float32 exp; double sum).
// out may alias x.
void softmax(const float* x, int64_t n, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] > m) m = x[i];
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = std::exp(x[i] - m);     // NaN stays NaN
    if (!std::isnan(out[i])) sum += out[i];  // NaN entries take no part in the sum
  }
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<double>(out[i]) / sum);
}

// score: [cols] <- scoring function of x: [cols] (softmax over the whole row).
void compute_scores(Scoring scoring, const float* x, int64_t cols, float* score) {
  switch (scoring) {
    case Scoring::kSoftmax:
      softmax(x, cols, score);
      return;
    case Scoring::kSigmoid:
      for (int64_t c = 0; c < cols; ++c) score[c] = 1.0f / (1.0f + std::exp(-x[c]));
      return;
    case Scoring::kSqrtSoftplus:
      for (int64_t c = 0; c < cols; ++c) {
        const float sp = x[c] > 20.0f ? x[c] : std::log1p(std::exp(x[c]));
        score[c] = std::sqrt(sp);
      }
      return;
  }
  fail(code::kInternal, "gating: unknown scoring");
}

// Writes one token's k slots. sel: [k] chosen router columns (-1 = unused slot),
// w: [k] their weights. Renormalisation sums all k slots (null experts included),
// then null-expert and unused slots become (-1, 0), then routed_scaling applies.
void write_row(const GatingParams& p, const int32_t* sel, const float* w, int32_t* ids_row,
               float* weights_row) {
  const int64_t k = p.k;
  float scale = p.routed_scaling;
  // A slot picked with a NaN score (a row with fewer than k numbers) has weight 0.
  auto weight = [w](int64_t s) { return std::isnan(w[s]) ? 0.0f : w[s]; };
  if (p.renormalize) {
    float sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) sum += weight(s);
    const float denom = sum + kRenormEps;
    for (int64_t s = 0; s < k; ++s) weights_row[s] = weight(s) / denom * scale;
  } else {
    for (int64_t s = 0; s < k; ++s) weights_row[s] = weight(s) * scale;
  }
  for (int64_t s = 0; s < k; ++s) {
    if (sel[s] < 0 || sel[s] >= p.experts) {
      ids_row[s] = -1;
      weights_row[s] = 0.0f;
    } else {
      ids_row[s] = sel[s];
    }
  }
}

// load: [experts] <- number of entries of ids: [tokens, k] equal to each expert.
// NOTE: one serial O(tokens * k) pass: cheap next to routing and thread-count free.
void count_load(const GatingParams& p) {
  std::vector<int64_t> counts(static_cast<size_t>(p.experts), 0);
  const int64_t n = p.tokens * p.k;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = p.ids[i];
    if (id >= 0 && id < p.experts) ++counts[static_cast<size_t>(id)];
  }
  for (int64_t e = 0; e < p.experts; ++e) {
    p.load[e] = static_cast<int32_t>(counts[static_cast<size_t>(e)]);
  }
}

// Per-chunk scratch for the row-wise modes, sized once per parallel_for chunk.
struct RowScratch {
  std::vector<float> x;        // [cols] biased logits
  std::vector<float> score;    // [cols] scores / probabilities
  std::vector<float> choice;   // [cols] selection values (scores + correction bias, masked)
  std::vector<int32_t> sel;    // [k] chosen columns in selection order, -1 = unused
  std::vector<float> w;        // [k] weights before post-processing
  std::vector<int32_t> order;  // [cols] partial-sort scratch
  std::vector<float> group_score;     // [n_group]
  std::vector<int32_t> group_sel;     // [topk_group] kept groups
  std::vector<int32_t> group_order;   // [n_group] partial-sort scratch
  std::vector<char> group_keep;       // [n_group]

  RowScratch(int64_t cols, int64_t k, int64_t n_group)
      : x(cols), score(cols), choice(cols), sel(k), w(k), order(cols), group_score(n_group),
        group_sel(n_group), group_order(n_group), group_keep(n_group) {}
};

// kTopkScores for one row whose x is loaded.
void route_topk_scores(const GatingParams& p, int64_t cols, RowScratch& s) {
  compute_scores(p.scoring, s.x.data(), cols, s.score.data());
  for (int64_t c = 0; c < cols; ++c) {
    s.choice[c] = s.score[c];
    if (p.correction_bias != nullptr && c < p.experts) s.choice[c] += p.correction_bias[c];
  }
  if (p.n_group > 1) {
    const int64_t group_size = p.experts / p.n_group;
    const int64_t top_in_group =
        p.correction_bias != nullptr ? std::min<int64_t>(2, group_size) : 1;
    int32_t top2[2];
    for (int64_t g = 0; g < p.n_group; ++g) {
      const float* c = s.choice.data() + g * group_size;
      select_topk(c, group_size, top_in_group, top2, nullptr);
      float gs = c[top2[0]];
      if (top_in_group == 2) gs += c[top2[1]];
      s.group_score[g] = gs;
    }
    select_topk(s.group_score.data(), p.n_group, p.topk_group, s.group_sel.data(),
                s.group_order.data());
    std::fill(s.group_keep.begin(), s.group_keep.end(), 0);
    for (int64_t i = 0; i < p.topk_group; ++i) s.group_keep[s.group_sel[i]] = 1;
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t g = 0; g < p.n_group; ++g) {
      if (s.group_keep[g]) continue;
      float* group = s.choice.data() + g * group_size;
      std::fill(group, group + group_size, neg_inf);
    }
  }
  select_topk(s.choice.data(), cols, p.k, s.sel.data(), s.order.data());
  for (int64_t i = 0; i < p.k; ++i) s.w[i] = s.score[s.sel[i]];
}

// kTopkLogitsThenSoftmax for one row whose x is loaded.
void route_topk_logits(const GatingParams& p, int64_t cols, RowScratch& s) {
  select_topk(s.x.data(), cols, p.k, s.sel.data(), s.order.data());
  for (int64_t i = 0; i < p.k; ++i) s.w[i] = s.x[s.sel[i]];
  softmax(s.w.data(), p.k, s.w.data());
}

// kTopP for one row whose x is loaded.
void route_top_p(const GatingParams& p, int64_t cols, RowScratch& s) {
  softmax(s.x.data(), cols, s.score.data());
  select_topk(s.score.data(), cols, p.k, s.sel.data(), s.order.data());
  // NOTE: cumulative sum in double over the float32 probabilities.
  double cum = 0.0;
  int64_t used = p.k;
  for (int64_t i = 0; i < p.k; ++i) {
    cum += s.score[s.sel[i]];
    if (cum >= static_cast<double>(p.top_p)) {
      used = i + 1;
      break;
    }
  }
  for (int64_t i = 0; i < p.k; ++i) {
    if (i < used) {
      s.w[i] = s.score[s.sel[i]];
    } else {
      s.sel[i] = -1;
      s.w[i] = 0.0f;
    }
  }
}

// kTopkScores, kTopkLogitsThenSoftmax and kTopP: independent rows.
void route_rows(const GatingParams& p) {
  const int64_t cols = p.experts + p.null_experts;
  parallel_for(p.tokens, kRowGrain, [&](int64_t begin, int64_t end) {
    RowScratch s(cols, p.k, p.n_group > 1 ? p.n_group : 0);
    for (int64_t t = begin; t < end; ++t) {
      read_logits_row(p, t, cols, s.x.data());
      switch (p.selection) {
        case Selection::kTopkScores: route_topk_scores(p, cols, s); break;
        case Selection::kTopkLogitsThenSoftmax: route_topk_logits(p, cols, s); break;
        case Selection::kTopP: route_top_p(p, cols, s); break;
        default: fail(code::kInternal, "gating: route_rows got a non row-wise selection");
      }
      write_row(p, s.sel.data(), s.w.data(), p.ids + t * p.k, p.weights + t * p.k);
    }
  });
}

// kExpertChoice. ids and weights are [tokens, experts]; weights doubles as the
// [tokens, experts] score matrix until each expert's column is finalised.
void route_expert_choice(const GatingParams& p) {
  const int64_t T = p.tokens;
  const int64_t E = p.experts;
  // Pass 1 (over tokens): scores into weights, ids to -1.
  parallel_for(T, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> x(E);  // [E] biased logits
    for (int64_t t = begin; t < end; ++t) {
      read_logits_row(p, t, E, x.data());
      compute_scores(p.scoring, x.data(), E, p.weights + t * E);
      std::fill(p.ids + t * E, p.ids + (t + 1) * E, -1);
    }
  });
  double cap = std::ceil(static_cast<double>(p.capacity_factor) * static_cast<double>(T) *
                         static_cast<double>(p.choice_k) / static_cast<double>(E));
  cap = std::min(std::max(cap, 0.0), static_cast<double>(T));
  const int64_t C = static_cast<int64_t>(cap);
  // Pass 2 (over experts): each expert keeps its top-C tokens by score.
  // NOTE: column access is strided, but each expert does O(T) work with nth_element
  // and owns its column and its load entry, so there is no sharing between chunks.
  parallel_for(E, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order(T);  // [T] token ids, partitioned by score
    for (int64_t e = begin; e < end; ++e) {
      const float* w = p.weights + e;  // column e, stride E
      std::iota(order.begin(), order.end(), 0);
      std::nth_element(order.begin(), order.begin() + C, order.end(), [w, E](int32_t a, int32_t b) {
        return ranks_before(w[a * E], a, w[b * E], b);
      });
      for (int64_t i = 0; i < C; ++i) p.ids[order[i] * E + e] = static_cast<int32_t>(e);
      for (int64_t t = 0; t < T; ++t) {
        float& wt = p.weights[t * E + e];
        wt = p.ids[t * E + e] == e && !std::isnan(wt) ? wt * p.routed_scaling : 0.0f;
      }
      p.load[e] = static_cast<int32_t>(C);
    }
  });
}

// kSinkhorn. P: [tokens, experts] double, P = exp(x - rowmax); each iteration divides
// every column by its sum, then every row by its sum. Top-k per row of the result;
// weights are the plain softmax probabilities of x.
void route_sinkhorn(const GatingParams& p) {
  const int64_t T = p.tokens;
  const int64_t E = p.experts;
  const int64_t iters = p.sinkhorn_iters;
  // NOTE: column sums come from fixed 64-row blocks (block partials summed in block
  // order), so the result is the same for any thread count.
  const int64_t blocks = (T + kSinkhornBlock - 1) / kSinkhornBlock;
  std::vector<double> P;        // [T, E] balancing matrix (only when iters > 0)
  std::vector<double> partial;  // [blocks, E] per-block column sums
  std::vector<double> colsum;   // [E]
  if (iters > 0) {
    P.resize(static_cast<size_t>(T * E));
    partial.assign(static_cast<size_t>(blocks * E), 0.0);
    colsum.resize(static_cast<size_t>(E));
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> x(E);  // [E] biased logits
      for (int64_t b = b0; b < b1; ++b) {
        double* part = partial.data() + b * E;
        for (int64_t t = b * kSinkhornBlock; t < std::min(T, (b + 1) * kSinkhornBlock); ++t) {
          read_logits_row(p, t, E, x.data());
          float m = -std::numeric_limits<float>::infinity();
          for (int64_t e = 0; e < E; ++e) {
            if (x[e] > m) m = x[e];
          }
          double* row = P.data() + t * E;
          for (int64_t e = 0; e < E; ++e) {
            // A NaN logit counts 0 in the balancing (it never wins a top-k on P = 0).
            row[e] = std::isnan(x[e]) ? 0.0 : std::exp(static_cast<double>(x[e]) - static_cast<double>(m));
            part[e] += row[e];
          }
        }
      }
    });
    for (int64_t it = 0; it < iters; ++it) {
      std::fill(colsum.begin(), colsum.end(), 0.0);
      for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t e = 0; e < E; ++e) colsum[e] += partial[b * E + e];
      }
      const bool last = it + 1 == iters;
      parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double* part = partial.data() + b * E;
          if (!last) std::fill(part, part + E, 0.0);
          for (int64_t t = b * kSinkhornBlock; t < std::min(T, (b + 1) * kSinkhornBlock); ++t) {
            double* row = P.data() + t * E;
            double rowsum = 0.0;
            // A zero sum (an all-NaN row, or a column nothing reaches) is left undivided.
            for (int64_t e = 0; e < E; ++e) {
              if (colsum[e] != 0.0) row[e] /= colsum[e];
              rowsum += row[e];
            }
            if (rowsum != 0.0)
              for (int64_t e = 0; e < E; ++e) row[e] /= rowsum;
            if (!last) {
              for (int64_t e = 0; e < E; ++e) part[e] += row[e];
            }
          }
        }
      });
    }
  }
  parallel_for(T, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> x(E);        // [E] biased logits, then softmax probabilities
    std::vector<double> pe(E);      // [E] exp(x - rowmax) when iters == 0
    std::vector<int32_t> sel(p.k);  // [k] chosen experts
    std::vector<float> w(p.k);      // [k] their probabilities
    std::vector<int32_t> order(E);  // [E] partial-sort scratch
    for (int64_t t = begin; t < end; ++t) {
      read_logits_row(p, t, E, x.data());
      const double* row = P.empty() ? nullptr : P.data() + t * E;
      if (row == nullptr) {
        // Zero iterations: P = exp(x - rowmax), computed the same way as above.
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t e = 0; e < E; ++e) {
          if (x[e] > m) m = x[e];
        }
        for (int64_t e = 0; e < E; ++e) {
          pe[e] = std::exp(static_cast<double>(x[e]) - static_cast<double>(m));
        }
        row = pe.data();
      }
      select_topk(row, E, p.k, sel.data(), order.data());
      softmax(x.data(), E, x.data());
      for (int64_t i = 0; i < p.k; ++i) w[i] = x[sel[i]];
      write_row(p, sel.data(), w.data(), p.ids + t * p.k, p.weights + t * p.k);
    }
  });
}


}  // namespace

void gating(const GatingParams& p) {
  check_gating_params(p);
  std::fill(p.load, p.load + p.experts, 0);
  if (p.tokens == 0) return;
  switch (p.selection) {
    case Selection::kExpertChoice:
      route_expert_choice(p);
      return;  // load is filled per expert
    case Selection::kSinkhorn:
      route_sinkhorn(p);
      break;
    default:
      route_rows(p);
      break;
  }
  count_load(p);
}

}  // namespace moekit::cpu
