// Parameter checks shared by the CPU and CUDA launchers (one place, the same messages).
#include <cmath>
#include <limits>

#include "kernels/common/error.h"
#include "kernels/common/gating_params.h"
#include "kernels/common/grouped_gemm_params.h"

namespace moekit {

void check_gating_params(const GatingParams& p) {
  MOEKIT_REQUIRE(p.tokens >= 0, "gating: tokens must be >= 0, got ", p.tokens);
  MOEKIT_REQUIRE(p.experts >= 1, "gating: experts must be >= 1, got ", p.experts);
  MOEKIT_REQUIRE(p.null_experts >= 0, "gating: null_experts must be >= 0, got ", p.null_experts);
  MOEKIT_REQUIRE(p.experts + p.null_experts <= std::numeric_limits<int32_t>::max(),
                 "gating: experts + null_experts must fit in int32");
  MOEKIT_REQUIRE(p.k >= 1, "gating: k must be >= 1, got ", p.k);
  MOEKIT_REQUIRE(p.logits_dtype == DType::kF32 || p.logits_dtype == DType::kF16 ||
                     p.logits_dtype == DType::kBF16,
                 "gating: logits must be f32, f16 or bf16, got ", dtype_name(p.logits_dtype));
  const int32_t scoring = static_cast<int32_t>(p.scoring);
  MOEKIT_REQUIRE(scoring >= 0 && scoring <= 2, "gating: unknown scoring ", scoring);
  MOEKIT_REQUIRE(p.load != nullptr, "gating: load must not be null");
  if (p.tokens > 0) {
    MOEKIT_REQUIRE(p.logits != nullptr, "gating: logits must not be null");
    MOEKIT_REQUIRE(p.ids != nullptr, "gating: ids must not be null");
    MOEKIT_REQUIRE(p.weights != nullptr, "gating: weights must not be null");
  }
  const int64_t cols = p.experts + p.null_experts;
  switch (p.selection) {
    case Selection::kTopkScores:
      MOEKIT_REQUIRE(p.k <= cols, "gating: k (", p.k, ") must be <= experts + null_experts (",
                     cols, ")");
      MOEKIT_REQUIRE(p.n_group >= 1, "gating: n_group must be >= 1, got ", p.n_group);
      if (p.n_group > 1) {
        MOEKIT_REQUIRE(p.experts % p.n_group == 0, "gating: experts (", p.experts,
                       ") must be divisible by n_group (", p.n_group, ")");
        MOEKIT_REQUIRE(p.null_experts == 0, "gating: grouped top-k does not support null experts");
        MOEKIT_REQUIRE(p.topk_group >= 1 && p.topk_group <= p.n_group, "gating: topk_group (",
                       p.topk_group, ") must be in [1, n_group = ", p.n_group, "]");
        const int64_t reachable = static_cast<int64_t>(p.topk_group) * (p.experts / p.n_group);
        MOEKIT_REQUIRE(p.k <= reachable, "gating: k (", p.k,
                       ") must be <= topk_group * experts / n_group (", reachable, ")");
      }
      return;
    case Selection::kTopkLogitsThenSoftmax:
      MOEKIT_REQUIRE(p.k <= cols, "gating: k (", p.k, ") must be <= experts + null_experts (",
                     cols, ")");
      return;
    case Selection::kTopP:
      MOEKIT_REQUIRE(p.scoring == Scoring::kSoftmax,
                     "gating: top-p selection requires softmax scoring");
      MOEKIT_REQUIRE(p.top_p > 0.0f && p.top_p <= 1.0f, "gating: top_p must be in (0, 1], got ",
                     p.top_p);
      MOEKIT_REQUIRE(p.k <= cols, "gating: k (", p.k, ") must be <= experts + null_experts (",
                     cols, ")");
      return;
    case Selection::kExpertChoice:
      MOEKIT_REQUIRE(p.null_experts == 0, "gating: expert-choice does not support null experts");
      MOEKIT_REQUIRE(p.k == p.experts, "gating: expert-choice needs k == experts (", p.experts,
                     "), got ", p.k);
      MOEKIT_REQUIRE(std::isfinite(p.capacity_factor) && p.capacity_factor >= 0.0f,
                     "gating: capacity_factor must be finite and >= 0, got ", p.capacity_factor);
      MOEKIT_REQUIRE(p.choice_k >= 1, "gating: choice_k must be >= 1, got ", p.choice_k);
      return;
    case Selection::kSinkhorn:
      MOEKIT_REQUIRE(p.null_experts == 0, "gating: sinkhorn does not support null experts");
      MOEKIT_REQUIRE(p.k <= p.experts, "gating: k (", p.k, ") must be <= experts (", p.experts,
                     ")");
      MOEKIT_REQUIRE(p.sinkhorn_iters >= 0, "gating: sinkhorn_iters must be >= 0, got ",
                     p.sinkhorn_iters);
      return;
  }
  fail(code::kInvalidArgument, "gating: unknown selection ", static_cast<int32_t>(p.selection));
}

void check_grouped_gemm_shape(const GroupedGemmParams& p) {
  MOEKIT_REQUIRE(p.rows >= 0, "grouped_gemm: rows must be >= 0, got ", p.rows);
  MOEKIT_REQUIRE(p.experts >= 0, "grouped_gemm: experts must be >= 0, got ", p.experts);
  MOEKIT_REQUIRE(p.n > 0 && p.k > 0, "grouped_gemm: n and k must be positive, got n=", p.n, " k=", p.k);
  MOEKIT_REQUIRE(p.n <= (int64_t{1} << 40) / p.k, "grouped_gemm: n*k too large");
  MOEKIT_REQUIRE(p.w_dtype == DType::kF32 || p.w_dtype == DType::kBF16 || p.w_dtype == DType::kF16,
                 "grouped_gemm: weight dtype must be f32, bf16 or f16, got ", dtype_name(p.w_dtype));
  MOEKIT_REQUIRE(p.layout == WeightLayout::kENK || p.layout == WeightLayout::kEKN,
                 "grouped_gemm: unknown weight layout ", static_cast<int>(p.layout));
  const int act = static_cast<int>(p.activation);
  MOEKIT_REQUIRE(act >= 0 && act <= static_cast<int>(Activation::kGeluTanh), "grouped_gemm: unknown activation ",
                 act);
  if (p.w_up != nullptr) {
    MOEKIT_REQUIRE(p.activation == Activation::kSwiGLU || p.activation == Activation::kGeGLU,
                   "grouped_gemm: a separate up weight needs activation swiglu or geglu");
  } else {
    MOEKIT_REQUIRE(p.bias_up == nullptr, "grouped_gemm: bias_up given without w_up");
    if (activation_is_glu(p.activation)) {
      MOEKIT_REQUIRE(p.n % 2 == 0, "grouped_gemm: a GLU activation needs an even n, got ", p.n);
    }
  }
}

}  // namespace moekit
