// Child sets the structure defines (a parent array, an edge list, CSR slices): the members of each position's set,
// prepared on the host once per run in O(N + E), for the kernels' SetReduce steps and for the linearizer (a member
// is a row the position reads).
#pragma once
#include <cstdint>
#include <vector>

namespace cortex {

// For keys in [0, num_keys): the indices i with keys[i] == k, in increasing i (a counting sort); keys outside the
// range are found by a scan when asked for (a key no node id can be: exact, rare).
struct KeyBuckets {
  std::vector<int64_t> offsets, items;
  const void* keys = nullptr;
  int64_t n = 0, num_keys = 0;

  template <class T>
  void build(const T* key_array, int64_t count, int64_t keys_in_range) {
    width_ = 0;
    fill_buckets(key_array, count, keys_in_range,
                 [keys_in_range](int64_t, int64_t k) { return k >= 0 && k < keys_in_range ? k : INT64_C(-1); });
  }

  // A padded forest's keys [trees, width] (parent arrays, one row per tree): element i of tree b = i / width is
  // bucketed under b * width + keys[i] when keys[i] is in [0, width), so that each tree's keys name its own rows.
  template <class T>
  void build_trees(const T* key_array, int64_t trees, int64_t width) {
    width_ = width;
    fill_buckets(key_array, trees * width, trees * width,
                 [width](int64_t i, int64_t k) { return k >= 0 && k < width ? i - i % width + k : INT64_C(-1); });
  }

  // Appends f(i) for every element i of tree `tree` (built by build_trees) with keys[i] == key, in increasing i:
  // i = tree * width + u, the member's row in the flattened table.
  template <class T, class F>
  void each_in_tree(int64_t tree, int64_t key, F&& f) const {
    if (key >= 0 && key < width_) {
      each<T>(tree * width_ + key, f);
      return;
    }
    const T* k = static_cast<const T*>(keys);
    for (int64_t i = tree * width_; i < (tree + 1) * width_; ++i) {
      if (static_cast<int64_t>(k[i]) == key) f(i);
    }
  }

  // Appends f(i) for every i with keys[i] == key, in increasing i.
  template <class T, class F>
  void each(int64_t key, F&& f) const {
    if (key >= 0 && key < num_keys) {
      for (int64_t e = offsets[key]; e < offsets[key + 1]; ++e) f(items[static_cast<size_t>(e)]);
      return;
    }
    const T* k = static_cast<const T*>(keys);
    for (int64_t i = 0; i < n; ++i) {
      if (static_cast<int64_t>(k[i]) == key) f(i);
    }
  }

 private:
  // A counting sort of the elements by bucket_of(i, keys[i]) (-1: in no bucket).
  template <class T, class B>
  void fill_buckets(const T* key_array, int64_t count, int64_t buckets, B bucket_of) {
    keys = key_array;
    n = count;
    num_keys = buckets;
    offsets.assign(static_cast<size_t>(num_keys) + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = bucket_of(i, static_cast<int64_t>(key_array[i]));
      if (b >= 0) ++offsets[static_cast<size_t>(b) + 1];
    }
    for (int64_t k = 0; k < num_keys; ++k) offsets[k + 1] += offsets[k];
    items.resize(static_cast<size_t>(offsets[num_keys]));
    std::vector<int64_t>& fill = scratch_;
    fill.assign(offsets.begin(), offsets.end() - 1);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = bucket_of(i, static_cast<int64_t>(key_array[i]));
      if (b >= 0) items[static_cast<size_t>(fill[static_cast<size_t>(b)]++)] = i;
    }
  }

  std::vector<int64_t> scratch_;
  int64_t width_ = 0;
};

// ONNX Slice on one axis with step 1: [start, stop) clamped to the axis, negative values counting from its end.
inline void slice_bounds(int64_t start, int64_t stop, int64_t len, int64_t* begin, int64_t* end) {
  if (start < 0) start += len;
  if (stop < 0) stop += len;
  start = start < 0 ? 0 : (start > len ? len : start);
  stop = stop < 0 ? 0 : (stop > len ? len : stop);
  *begin = start;
  *end = stop < start ? start : stop;
}

}  // namespace cortex
