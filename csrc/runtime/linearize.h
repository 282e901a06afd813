// cortex::Linearizer: turns a visit sequence (or a DAG) into level batches, exactly as
// "Linearizer semantics" in docs/contracts.md says.
//
// Input: num_nodes N (rows of the state tables), L positions; for position p: node[p] in [0, N) (or -1: the
// position writes no state row),
// case_id[p] in [0, C), reads[p*K + k] in [0, N) or -1 (no read).
//
// visit mode (Loop semantics): valid iff no node appears twice in node[] and every read r >= 0 at position p
//   of a node listed at q != p has q < p (reading its own row, before writing it, reads the initial state).
//   level(p) = 0 if no read names another listed node, else 1 + max level of the listed nodes it reads. When not valid the schedule says
//   so (valid = false, no batches) and the kernel runs positions one at a time.
// dag mode (TreeRec semantics): L == N and node[p] == p. level(p) = 0 without reads, else 1 + max
//   level of the nodes read. A cycle is an error that names a node on it.
//
// Output: batches ordered by level, then case; positions inside a batch increasing.
// Batch b = (batch_level[b], batch_case[b], positions[batch_offsets[b] .. batch_offsets[b+1])).
//
// Errors (out-of-range values, a cycle) are returned as a non-empty message; never thrown.
// O(N + L*K + C + levels) time; the member buffers (and the Schedule's vectors) are reused, so a
// Linearizer and a Schedule kept across calls do not allocate in steady state.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace cortex {

namespace lin_detail {
// Not std::to_string: its libstdc++ implementation brings a STB_GNU_UNIQUE symbol into the
// kernel library, which makes dlclose() a no-op.
inline std::string str(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
  return std::string(buf);
}
}  // namespace lin_detail

struct Schedule {
  bool valid = false;
  int32_t num_levels = 0;
  std::vector<int64_t> batch_offsets;  // num_batches + 1 entries (just {0} when there are none)
  std::vector<int32_t> batch_level;    // per batch
  std::vector<int32_t> batch_case;     // per batch
  std::vector<int64_t> positions;      // CSR payload, length L when valid

  int64_t num_batches() const { return static_cast<int64_t>(batch_level.size()); }

  // The exact sequential semantics as batches: one position a batch, one batch a level, in the listed order (what a
  // visit that is not a topological order runs). `valid` stays false: a schedule of this shape says so.
  void make_sequential(int64_t listed, const int32_t* case_id) {
    clear();
    positions.resize(listed);
    for (int64_t q = 0; q < listed; ++q) {
      positions[q] = q;
      batch_offsets.push_back(q + 1);
      batch_level.push_back(static_cast<int32_t>(q));
      batch_case.push_back(case_id[q]);
    }
    num_levels = static_cast<int32_t>(listed);
  }

  void clear() {
    valid = false;
    num_levels = 0;
    batch_offsets.clear();
    batch_offsets.push_back(0);
    batch_level.clear();
    batch_case.clear();
    positions.clear();
  }
};

class Linearizer {
 public:
  // visit mode. Returns "" on success (out.valid tells whether the batched schedule is valid),
  // or an error message for malformed input (out is then cleared and invalid).
  // `extra_offsets`, `extra_rows` (optional): more rows each position reads, as CSR (position p reads
  // extra_rows[extra_offsets[p] .. extra_offsets[p + 1]]): the members of its child sets.
  std::string visit(int64_t num_nodes, int64_t L, const int64_t* node, const int32_t* case_id, int32_t num_cases,
                    const int64_t* reads, int32_t K, Schedule& out, const int64_t* extra_offsets = nullptr,
                    const int64_t* extra_rows = nullptr) {
    out.clear();
    std::string err = check_common(num_nodes, L, case_id, num_cases, reads, K);
    if (!err.empty()) return err;
    if (extra_offsets != nullptr) {
      for (int64_t i = 0; i < extra_offsets[L]; ++i) {
        if (extra_rows[i] < 0 || extra_rows[i] >= num_nodes) {
          return "linearize: a set member " + lin_detail::str(extra_rows[i]) + " is out of range [0, " +
                 lin_detail::str(num_nodes) + ")";
        }
      }
    }
    pos_of_.assign(static_cast<size_t>(num_nodes), -1);
    bool valid = true;
    for (int64_t p = 0; p < L; ++p) {
      const int64_t v = node[p];
      if (v == -1) continue;  // a position that writes no state row
      if (v < 0 || v >= num_nodes) {
        return "linearize(visit): node[" + lin_detail::str(p) + "] = " + lin_detail::str(v) + " is out of range [0, " +
               lin_detail::str(num_nodes) + ")";
      }
      if (pos_of_[static_cast<size_t>(v)] >= 0) {
        valid = false;  // listed twice: keep scanning for range errors
      } else {
        pos_of_[static_cast<size_t>(v)] = p;
      }
    }
    if (!valid) return std::string();
    level_.resize(static_cast<size_t>(L));
    int32_t max_level = -1;
    for (int64_t p = 0; p < L; ++p) {
      int32_t lvl = 0;
      const int64_t* rp = reads + p * K;
      auto read = [&](int64_t r) {  // false: read before being written, not batchable
        if (r < 0) return true;
        const int64_t q = pos_of_[static_cast<size_t>(r)];
        if (q < 0 || q == p) return true;  // never listed, or its own row: reads the initial state
        if (q > p) return false;
        lvl = std::max(lvl, level_[static_cast<size_t>(q)] + 1);
        return true;
      };
      for (int32_t k = 0; k < K; ++k) {
        if (!read(rp[k])) return std::string();
      }
      if (extra_offsets != nullptr) {
        for (int64_t e = extra_offsets[p]; e < extra_offsets[p + 1]; ++e) {
          if (!read(extra_rows[e])) return std::string();
        }
      }
      level_[static_cast<size_t>(p)] = lvl;
      max_level = std::max(max_level, lvl);
    }
    build_batches(L, case_id, num_cases, max_level + 1, out);
    return std::string();
  }

  // dag mode: L == num_nodes, node[p] == p. Returns "" on success, else an error message (a cycle
  // names a node on it). Iterative (Kahn), so long chains are fine.
  std::string dag(int64_t num_nodes, const int32_t* case_id, int32_t num_cases, const int64_t* reads, int32_t K,
                  Schedule& out) {
    out.clear();
    const int64_t N = num_nodes;
    std::string err = check_common(N, N, case_id, num_cases, reads, K);
    if (!err.empty()) return err;
    const size_t n = static_cast<size_t>(N);
    // indegree = number of (non -1) reads; dependents CSR: r -> readers of r.
    indeg_.assign(n, 0);
    dep_off_.assign(n + 1, 0);
    for (int64_t p = 0; p < N; ++p) {
      const int64_t* rp = reads + p * K;
      for (int32_t k = 0; k < K; ++k) {
        const int64_t r = rp[k];
        if (r < 0) continue;
        ++indeg_[static_cast<size_t>(p)];
        ++dep_off_[static_cast<size_t>(r) + 1];
      }
    }
    for (size_t i = 0; i < n; ++i) dep_off_[i + 1] += dep_off_[i];
    dep_.resize(static_cast<size_t>(dep_off_[n]));
    fill_.assign(dep_off_.begin(), dep_off_.end() - 1);
    for (int64_t p = 0; p < N; ++p) {
      const int64_t* rp = reads + p * K;
      for (int32_t k = 0; k < K; ++k) {
        const int64_t r = rp[k];
        if (r < 0) continue;
        dep_[static_cast<size_t>(fill_[static_cast<size_t>(r)]++)] = p;
      }
    }
    // Kahn's algorithm, queue stored in fill_ (reused).
    level_.assign(n, 0);
    fill_.resize(n);
    int64_t head = 0, tail = 0;
    for (int64_t p = 0; p < N; ++p)
      if (indeg_[static_cast<size_t>(p)] == 0) fill_[static_cast<size_t>(tail++)] = p;
    int32_t max_level = -1;
    while (head < tail) {
      const int64_t u = fill_[static_cast<size_t>(head++)];
      const int32_t lu = level_[static_cast<size_t>(u)];
      max_level = std::max(max_level, lu);
      for (int64_t e = dep_off_[static_cast<size_t>(u)]; e < dep_off_[static_cast<size_t>(u) + 1]; ++e) {
        const int64_t d = dep_[static_cast<size_t>(e)];
        if (level_[static_cast<size_t>(d)] < lu + 1) level_[static_cast<size_t>(d)] = lu + 1;
        if (--indeg_[static_cast<size_t>(d)] == 0) fill_[static_cast<size_t>(tail++)] = d;
      }
    }
    if (tail < N) return cycle_message(N, reads, K);
    build_batches(N, case_id, num_cases, max_level + 1, out);
    return std::string();
  }

 private:
  static std::string check_common(int64_t num_nodes, int64_t L, const int32_t* case_id, int32_t num_cases,
                                  const int64_t* reads, int32_t K) {
    if (num_nodes < 0) return "linearize: num_nodes must be >= 0, got " + lin_detail::str(num_nodes);
    if (L < 0) return "linearize: the number of positions must be >= 0, got " + lin_detail::str(L);
    if (L > INT32_MAX) return "linearize: too many positions (" + lin_detail::str(L) + ")";
    if (K < 0) return "linearize: K must be >= 0, got " + lin_detail::str(K);
    if (L > 0 && num_cases <= 0) return "linearize: num_cases must be >= 1, got " + lin_detail::str(num_cases);
    for (int64_t p = 0; p < L; ++p) {
      const int32_t c = case_id[p];
      if (c < 0 || c >= num_cases) {
        return "linearize: case_id[" + lin_detail::str(p) + "] = " + lin_detail::str(c) + " is out of range [0, " +
               lin_detail::str(num_cases) + ")";
      }
    }
    const int64_t LK = L * K;
    for (int64_t i = 0; i < LK; ++i) {
      const int64_t r = reads[i];
      if (r < -1 || r >= num_nodes) {
        return "linearize: reads[" + lin_detail::str(i / K) + ", " + lin_detail::str(i % K) + "] = " +
               lin_detail::str(r) + " is out of range [0, " + lin_detail::str(num_nodes) + ") (or -1 for no read)";
      }
    }
    return std::string();
  }

  // After Kahn: nodes with indeg_ > 0 are exactly the unprocessed ones; each has an unprocessed
  // read. Walk unprocessed reads from one of them until a node repeats: that node is on a cycle.
  std::string cycle_message(int64_t N, const int64_t* reads, int32_t K) {
    const size_t n = static_cast<size_t>(N);
    auto unprocessed_read = [&](int64_t v) -> int64_t {
      const int64_t* rp = reads + v * K;
      for (int32_t k = 0; k < K; ++k) {
        const int64_t r = rp[k];
        if (r >= 0 && indeg_[static_cast<size_t>(r)] > 0) return r;
      }
      return -1;  // cannot happen
    };
    int64_t start = -1;
    for (int64_t p = 0; p < N; ++p)
      if (indeg_[static_cast<size_t>(p)] > 0) {
        start = p;
        break;
      }
    fill_.assign(n, 0);  // visited marks
    int64_t v = start;
    while (v >= 0 && !fill_[static_cast<size_t>(v)]) {
      fill_[static_cast<size_t>(v)] = 1;
      v = unprocessed_read(v);
    }
    if (v < 0) return "linearize(dag): cycle detected";
    // v is on the cycle; spell out (a prefix of) it.
    std::string path = lin_detail::str(v);
    int64_t w = unprocessed_read(v);
    int count = 0;
    // follow the cycle: from v, the walk returns to v
    while (w >= 0 && w != v && count < 8) {
      path += " -> " + lin_detail::str(w);
      w = unprocessed_read(w);
      ++count;
    }
    if (w == v) {
      path += " -> " + lin_detail::str(v);
    } else {
      path += " -> ...";
    }
    return "linearize(dag): the structure has a cycle through node " + lin_detail::str(v) + " (reads: " + path + ")";
  }

  // Stable counting sorts: by case, then by level -> (level, case, position) order.
  void build_batches(int64_t L, const int32_t* case_id, int32_t num_cases, int32_t num_levels, Schedule& out) {
    out.valid = true;
    out.num_levels = L > 0 ? num_levels : 0;
    if (L == 0) return;
    const size_t n = static_cast<size_t>(L);
    out.positions.resize(n);
    fill_.resize(n);
    int64_t* by_case = fill_.data();
    if (static_cast<int64_t>(num_cases) <= 4 * L + 64) {
      count_.assign(static_cast<size_t>(num_cases) + 1, 0);
      for (int64_t p = 0; p < L; ++p) ++count_[static_cast<size_t>(case_id[p]) + 1];
      for (size_t c = 0; c < static_cast<size_t>(num_cases); ++c) count_[c + 1] += count_[c];
      for (int64_t p = 0; p < L; ++p) by_case[count_[static_cast<size_t>(case_id[p])]++] = p;
    } else {  // very many cases, few positions: sort instead of bucketing
      for (int64_t p = 0; p < L; ++p) by_case[p] = p;
      std::stable_sort(by_case, by_case + L, [&](int64_t a, int64_t b) { return case_id[a] < case_id[b]; });
    }
    count_.assign(static_cast<size_t>(num_levels) + 1, 0);
    for (int64_t p = 0; p < L; ++p) ++count_[static_cast<size_t>(level_[static_cast<size_t>(p)]) + 1];
    for (size_t l = 0; l < static_cast<size_t>(num_levels); ++l) count_[l + 1] += count_[l];
    for (int64_t i = 0; i < L; ++i) {
      const int64_t p = by_case[i];
      out.positions[static_cast<size_t>(count_[static_cast<size_t>(level_[static_cast<size_t>(p)])]++)] = p;
    }
    int32_t cur_level = -1, cur_case = -1;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t p = out.positions[static_cast<size_t>(i)];
      const int32_t lv = level_[static_cast<size_t>(p)], cs = case_id[p];
      if (lv != cur_level || cs != cur_case) {
        if (i > 0) out.batch_offsets.push_back(i);
        out.batch_level.push_back(lv);
        out.batch_case.push_back(cs);
        cur_level = lv;
        cur_case = cs;
      }
    }
    out.batch_offsets.push_back(L);
  }

  std::vector<int64_t> pos_of_;
  std::vector<int32_t> level_;
  std::vector<int64_t> indeg_;
  std::vector<int64_t> dep_off_;
  std::vector<int64_t> dep_;
  std::vector<int64_t> fill_;
  std::vector<int64_t> count_;
};

// Lanes: a valid schedule cut into independent parts, one per thread, each run level by level on its own thread
// with no barrier between the parts (a forest's trees share nothing). Positions are joined when one reads a row
// another writes (its child, a member of its set); the joined groups go to the least loaded lane, largest first;
// each lane keeps the schedule's batch order, restricted to its positions. Results are those of the whole schedule:
// every position computes the same rows from the same rows (float32 products are batch-invariant, gemm.h).
// split() returns the lanes in use: 0 when one part would hold most of the positions (a single tree: nothing to
// gain) or the levels are wide, else 2..max_lanes, in lane[0..count). O(N + L*K) time; buffers reused across calls.
class Lanes {
 public:
  std::vector<Schedule> lane;

  int64_t split(const Schedule& s, int64_t N, int64_t listed, const int64_t* node, const int64_t* reads, int64_t K,
                int64_t max_lanes, const int64_t* extra_offsets = nullptr, const int64_t* extra_rows = nullptr) {
    if (!s.valid || max_lanes < 2 || listed < 2) return 0;
    // Lanes save each level's dispatch and barrier (several microseconds), which matters where a level gives each
    // thread a few rows (10 trees: 21 a level on average); with many rows a level (100 trees: 146) the shared
    // schedule's barriers are a small part and the lanes' extra costs (this split, the threads' memory traffic at
    // once) are not (hidden 64, 2 threads: 10 trees 0.16 -> 0.12 ms, 100 trees 1.05 -> 1.1-1.2 ms)
    constexpr int64_t kRowsPerThread = 16;
    if (listed > kRowsPerThread * max_lanes * std::max<int64_t>(s.num_levels, 1)) return 0;
    writer_.assign(static_cast<size_t>(N), -1);
    for (int64_t q = 0; q < listed; ++q)
      if (node[q] >= 0) writer_[static_cast<size_t>(node[q])] = q;
    parent_.resize(static_cast<size_t>(listed));
    for (int64_t q = 0; q < listed; ++q) parent_[static_cast<size_t>(q)] = q;
    auto join = [&](int64_t q, int64_t r) {
      if (r < 0 || r >= N) return;
      const int64_t w = writer_[static_cast<size_t>(r)];
      if (w >= 0) unite(q, w);
    };
    for (int64_t q = 0; q < listed; ++q) {
      for (int64_t k = 0; k < K; ++k) join(q, reads[q * K + k]);
      if (extra_offsets != nullptr)
        for (int64_t e = extra_offsets[q]; e < extra_offsets[q + 1]; ++e) join(q, extra_rows[e]);
    }
    // the groups' sizes, largest first, each to the least loaded lane
    size_.assign(static_cast<size_t>(listed), 0);
    for (int64_t q = 0; q < listed; ++q) ++size_[static_cast<size_t>(find(q))];
    groups_.clear();
    for (int64_t q = 0; q < listed; ++q)
      if (size_[static_cast<size_t>(q)] > 0) groups_.push_back(q);
    if (groups_.size() < 2) return 0;
    std::sort(groups_.begin(), groups_.end(), [&](int64_t a, int64_t b) {
      return size_[static_cast<size_t>(a)] != size_[static_cast<size_t>(b)]
                 ? size_[static_cast<size_t>(a)] > size_[static_cast<size_t>(b)] : a < b;
    });
    const int64_t count = std::min<int64_t>(max_lanes, static_cast<int64_t>(groups_.size()));
    load_.assign(static_cast<size_t>(count), 0);
    lane_of_.assign(static_cast<size_t>(listed), 0);  // by group root
    for (int64_t g : groups_) {
      const int64_t l = std::min_element(load_.begin(), load_.end()) - load_.begin();
      lane_of_[static_cast<size_t>(g)] = l;
      load_[static_cast<size_t>(l)] += size_[static_cast<size_t>(g)];
    }
    // no gain when the busiest lane holds most of the work
    if (4 * *std::max_element(load_.begin(), load_.end()) > 3 * listed) return 0;
    if (static_cast<int64_t>(lane.size()) < count) lane.resize(static_cast<size_t>(count));
    for (int64_t l = 0; l < count; ++l) {
      lane[static_cast<size_t>(l)].clear();
      lane[static_cast<size_t>(l)].valid = true;
    }
    for (int64_t b = 0; b < s.num_batches(); ++b) {
      for (int64_t i = s.batch_offsets[static_cast<size_t>(b)]; i < s.batch_offsets[static_cast<size_t>(b) + 1]; ++i) {
        const int64_t q = s.positions[static_cast<size_t>(i)];
        Schedule& t = lane[static_cast<size_t>(lane_of_[static_cast<size_t>(find(q))])];
        const int64_t open = t.num_batches() - 1;  // this batch's part in lane t, if it has one yet
        if (open < 0 || t.batch_offsets[static_cast<size_t>(open) + 1] != -b - 1) {
          t.batch_level.push_back(s.batch_level[static_cast<size_t>(b)]);
          t.batch_case.push_back(s.batch_case[static_cast<size_t>(b)]);
          t.batch_offsets.push_back(-b - 1);  // marks the open batch; its end is written below
        }
        t.positions.push_back(q);
      }
      for (int64_t l = 0; l < count; ++l) {  // close the parts this batch opened
        Schedule& t = lane[static_cast<size_t>(l)];
        if (t.num_batches() > 0 && t.batch_offsets.back() == -b - 1)
          t.batch_offsets.back() = static_cast<int64_t>(t.positions.size());
      }
    }
    for (int64_t l = 0; l < count; ++l) {
      Schedule& t = lane[static_cast<size_t>(l)];
      t.num_levels = t.num_batches() ? t.batch_level.back() + 1 : 0;
    }
    return count;
  }

 private:
  int64_t find(int64_t q) {
    while (parent_[static_cast<size_t>(q)] != q) {
      parent_[static_cast<size_t>(q)] = parent_[static_cast<size_t>(parent_[static_cast<size_t>(q)])];
      q = parent_[static_cast<size_t>(q)];
    }
    return q;
  }
  void unite(int64_t a, int64_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent_[static_cast<size_t>(std::max(a, b))] = std::min(a, b);
  }

  std::vector<int64_t> writer_, parent_, size_, groups_, load_, lane_of_;
};

}  // namespace cortex
