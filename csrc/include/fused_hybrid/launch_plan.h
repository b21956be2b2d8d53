// Host-side launch planning for the CUDA multi-tensor kernels, in plain C++ (no CUDA), so that it is compiled
// into every build and unit tested on the CPU (torch.ops.fused_hybrid.plan_launches, tests/test_cuda_plan.py).
//
// A call hands the kernels a list of tensors; each tensor is cut into "chunks" (a fixed number of elements for
// the flat kernels, a group of rows for ND-Adam), and every CUDA block processes one chunk. The chunk table
// (block -> (tensor, chunk)) travels in the kernel arguments, as in PyTorch's MultiTensorApply.cuh and Apex's
// multi_tensor_apply. A launch is full when its tensor table or its block table is full; a tensor whose chunks
// do not all fit is continued in the next launch (it then appears in both, as in Apex). Tensors with no chunks
// (numel 0) are skipped.
//
// Every chunk also gets a global "slot": chunks are numbered in (tensor, chunk) order over the whole call, and
// launch L's block b owns slot launches[L].slot_base + b. Kernels that reduce (SWATS's <p,g>, <p,p>) write
// one partial per slot; tensor t's slots are the contiguous range [slot_begin[t], slot_begin[t] + chunks[t]),
// so a finalize step sums them in a fixed order (bitwise reproducible, no atomics).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace fused_hybrid {
namespace plan {

// Table sizes of the CUDA kernels' argument struct (csrc/cuda/multi_tensor_apply.cuh explains the sizing for
// CUDA 12.1+'s 32764 bytes of kernel parameters): 2048 blocks per launch, and for D tensor lists per tensor
// 8*D + 28 bytes out of 18908.
constexpr int64_t kMaxBlocks = 2048;
constexpr int kTensorBudgetBytes = 18908;
constexpr int max_tensors_for(int depth) { return kTensorBudgetBytes / (8 * depth + 28); }

// The geometry the host code plans launches with: elements per chunk before pick_chunk_size grows it, and caps on
// the blocks and tensors of one launch (below the argument table's own sizes). A CUDA build always uses these
// defaults; the simulator's tests (csrc/sim) shrink them so that tensors of a few thousand elements span several
// chunks and several launches, which the real geometry only reaches at ~2^27 elements or hundreds of tensors.
struct Geometry {
  int64_t base_chunk = 65536;
  int64_t max_chunk = int64_t(1) << 22;
  int64_t max_blocks = kMaxBlocks;
  int64_t max_tensors = int64_t(1) << 30;
};

struct Launch {
  std::vector<int64_t> tensors;       // global tensor index of each local tensor slot
  std::vector<int32_t> block_tensor;  // local tensor slot of each block
  std::vector<int64_t> block_chunk;   // chunk index (within its tensor) of each block
  int64_t slot_base = 0;              // global slot of block 0
};

// Chunks of a tensor of n elements cut into chunk_size pieces (the last one may be short).
inline int64_t num_chunks(int64_t n, int64_t chunk_size) { return n <= 0 ? 0 : (n + chunk_size - 1) / chunk_size; }

// The launches for tensors with chunks[t] chunks each, at most max_tensors tensors and max_blocks blocks per
// launch.
inline std::vector<Launch> plan_launches(const std::vector<int64_t>& chunks, int64_t max_tensors,
                                         int64_t max_blocks) {
  if (max_tensors < 1 || max_blocks < 1) throw std::invalid_argument("plan_launches: limits must be >= 1");
  std::vector<Launch> out;
  Launch cur;
  int64_t slot = 0;
  auto flush = [&]() {
    if (!cur.block_tensor.empty()) out.push_back(std::move(cur));
    cur = Launch();
    cur.slot_base = slot;
  };
  for (int64_t t = 0; t < static_cast<int64_t>(chunks.size()); ++t) {
    const int64_t nc = chunks[t];
    if (nc < 0) throw std::invalid_argument("plan_launches: negative chunk count");
    for (int64_t c = 0; c < nc; ++c) {
      if (cur.tensors.empty() || cur.tensors.back() != t) {
        if (static_cast<int64_t>(cur.tensors.size()) == max_tensors) flush();
        cur.tensors.push_back(t);
      }
      cur.block_tensor.push_back(static_cast<int32_t>(cur.tensors.size() - 1));
      cur.block_chunk.push_back(c);
      ++slot;
      if (static_cast<int64_t>(cur.block_tensor.size()) == max_blocks) flush();
    }
  }
  flush();
  return out;
}

// Flat kernels: elements per chunk. The smallest power-of-two multiple of base_chunk (at most max_chunk) with
// which all chunks fit in one launch's block table, so one launch covers a large model (a 1e9-element call
// with 2048 blocks gets 2^19-element chunks); small calls keep base_chunk and fill the GPU with blocks.
inline int64_t pick_chunk_size(const std::vector<int64_t>& numels, int64_t max_blocks, int64_t base_chunk = 65536,
                               int64_t max_chunk = int64_t(1) << 22) {
  int64_t c = base_chunk;
  for (;;) {
    int64_t total = 0;
    for (const int64_t n : numels) total += num_chunks(n, c);
    if (total <= max_blocks || c >= max_chunk) return c;
    c *= 2;
  }
}

// ND-Adam: rows of row_len elements; a chunk is a group of whole rows. Short rows are grouped so that a chunk
// holds about target elements (a warp per row inside the block); rows of at least block_row_min elements get a
// chunk, and the whole block, each. constexpr: the CUDA kernels call it on the device too.
constexpr int64_t rows_per_chunk(int64_t row_len, int64_t target = 8192, int64_t block_row_min = 2048) {
  return (row_len <= 0 || row_len >= block_row_min || target / row_len < 1) ? 1 : target / row_len;
}

// ND-Adam's chunk grid. Every chunk size of the call grows by one power-of-two factor `scale`: flat tensors
// (row_len 0) get chunks of base_chunk * scale elements (at most max_chunk), row tensors rows_per_chunk(L) * scale
// rows (a block loops over them: a warp per short row, the whole block per long row). scale is the smallest with
// which all chunks fit one launch's block table, so a [50257, 2048] embedding (50257 long rows) takes one launch
// with 32 rows per block instead of 25 launches; small calls keep scale 1 and fill the GPU with blocks.
struct RowGrid {
  int64_t chunk_size = 0, row_scale = 1;
  std::vector<int64_t> chunks;
};

inline RowGrid ndadam_grid(const std::vector<int64_t>& numels, const std::vector<int64_t>& row_lens,
                           int64_t max_blocks, int64_t base_chunk = 65536, int64_t max_chunk = int64_t(1) << 22,
                           int64_t max_scale = int64_t(1) << 16) {
  if (numels.size() != row_lens.size()) throw std::invalid_argument("ndadam_grid: one row_len per tensor");
  RowGrid g;
  for (;;) {
    g.chunk_size = std::min(base_chunk * g.row_scale, std::max(base_chunk, max_chunk));
    g.chunks.clear();
    int64_t total = 0;
    for (size_t i = 0; i < numels.size(); ++i) {
      const int64_t n = numels[i], L = row_lens[i];
      g.chunks.push_back(L <= 0 ? num_chunks(n, g.chunk_size) : num_chunks(n / L, rows_per_chunk(L) * g.row_scale));
      total += g.chunks.back();
    }
    if (total <= max_blocks || g.row_scale >= max_scale) return g;
    g.row_scale *= 2;
  }
}

// The chunk grid of one call: the chunk size picked for these tensors, each tensor's chunk count (at least
// min_chunks: a kernel that must visit every tensor, even an empty one, asks for 1), and where its per-chunk
// reduction slots begin in one flat slot array (total slots: `slots`).
struct ChunkGrid {
  int64_t chunk_size = 0;
  std::vector<int64_t> chunks, slot_begin;
  int64_t slots = 0;
};

inline ChunkGrid chunk_grid(const std::vector<int64_t>& numels, const Geometry& geo, int64_t min_chunks = 0) {
  ChunkGrid g;
  g.chunk_size = pick_chunk_size(numels, geo.max_blocks, geo.base_chunk, geo.max_chunk);
  for (const int64_t n : numels) {
    g.slot_begin.push_back(g.slots);
    g.chunks.push_back(std::max(min_chunks, num_chunks(n, g.chunk_size)));
    g.slots += g.chunks.back();
  }
  return g;
}

// The flat encoding returned by the debug op fused_hybrid::plan_launches:
// [chunk_size, num_launches, then per launch: slot_base, num_tensors, num_blocks, tensors...,
//  (block_tensor, block_chunk) per block...].
inline std::vector<int64_t> encode(int64_t chunk_size, const std::vector<Launch>& launches) {
  std::vector<int64_t> e{chunk_size, static_cast<int64_t>(launches.size())};
  for (const auto& l : launches) {
    e.push_back(l.slot_base);
    e.push_back(static_cast<int64_t>(l.tensors.size()));
    e.push_back(static_cast<int64_t>(l.block_tensor.size()));
    e.insert(e.end(), l.tensors.begin(), l.tensors.end());
    for (size_t b = 0; b < l.block_tensor.size(); ++b) {
      e.push_back(l.block_tensor[b]);
      e.push_back(l.block_chunk[b]);
    }
  }
  return e;
}

}  // namespace plan
}  // namespace fused_hybrid
