// Debug ops exposing the CUDA kernels' host-side launch planning (csrc/include/fused_hybrid/launch_plan.h) on
// the CPU, so that tests can check how tensor lists are split into launches and chunks without a GPU. Built in
// every configuration (the planning is plain C++).
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fused_hybrid/launch_plan.h"

namespace {

// The launches for tensors of the given sizes: chunk_size > 0 fixes the chunk size, 0 picks it as the CUDA ops
// do; max_tensors / max_blocks > 0 override the table sizes (0: the CUDA kernels' own for `depth` tensor lists);
// every tensor gets at least min_chunks chunks (MAS's reducing variants give an empty tensor one).
// Returns plan::encode's flat list.
std::vector<int64_t> plan_launches(std::vector<int64_t> numels, int64_t chunk_size, int64_t depth,
                                   int64_t max_tensors, int64_t max_blocks, int64_t min_chunks) {
  using namespace fused_hybrid::plan;
  TORCH_CHECK(depth >= 1 && depth <= 8, "plan_launches: depth must be in [1, 8]");
  for (const int64_t n : numels) TORCH_CHECK(n >= 0, "plan_launches: numels must be >= 0");
  if (max_tensors <= 0) max_tensors = max_tensors_for(static_cast<int>(depth));
  if (max_blocks <= 0) max_blocks = kMaxBlocks;
  if (chunk_size <= 0) chunk_size = pick_chunk_size(numels, max_blocks);
  std::vector<int64_t> chunks;
  for (const int64_t n : numels) chunks.push_back(std::max(min_chunks, num_chunks(n, chunk_size)));
  return encode(chunk_size, fused_hybrid::plan::plan_launches(chunks, max_tensors, max_blocks));
}

// ND-Adam's launches (csrc/cuda/ndadam.cu: 4 tensor lists, chunks from plan::ndadam_grid):
// [row_scale, then plan::encode's flat list].
std::vector<int64_t> plan_ndadam(std::vector<int64_t> numels, std::vector<int64_t> row_lens) {
  using namespace fused_hybrid::plan;
  TORCH_CHECK(numels.size() == row_lens.size(), "plan_ndadam: one row_len per tensor");
  for (size_t i = 0; i < numels.size(); ++i) {
    TORCH_CHECK(numels[i] >= 0 && row_lens[i] >= 0 && (row_lens[i] == 0 || numels[i] % row_lens[i] == 0),
                "plan_ndadam: row_lens[", i, "] = ", row_lens[i], " does not divide ", numels[i]);
  }
  const RowGrid g = ndadam_grid(numels, row_lens, kMaxBlocks);
  std::vector<int64_t> out{g.row_scale};
  const auto e = encode(g.chunk_size, fused_hybrid::plan::plan_launches(g.chunks, max_tensors_for(4), kMaxBlocks));
  out.insert(out.end(), e.begin(), e.end());
  return out;
}

// The table sizes of the CUDA kernels for `depth` tensor lists: [max_tensors, max_blocks].
std::vector<int64_t> plan_limits(int64_t depth) {
  using namespace fused_hybrid::plan;
  TORCH_CHECK(depth >= 1 && depth <= 8, "plan_limits: depth must be in [1, 8]");
  return {max_tensors_for(static_cast<int>(depth)), kMaxBlocks};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_hybrid, m) {
  m.def("plan_launches(int[] numels, int chunk_size=0, int depth=6, int max_tensors=0, int max_blocks=0, "
        "int min_chunks=0) -> int[]",
        &plan_launches);
  m.def("plan_ndadam(int[] numels, int[] row_lens) -> int[]", &plan_ndadam);
  m.def("plan_limits(int depth) -> int[]", &plan_limits);
}
