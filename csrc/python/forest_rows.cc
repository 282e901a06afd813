// cortex._C.concat_rows, rows_outside and ids_within: the array work of checking and merging requests into one
// forest (cortex/serving/merge.py, indexeval.py), each one call that keeps the GIL. The numpy equivalents are a few
// ufuncs each, and numpy releases the GIL inside every ufunc over a few hundred elements: in a server, each release
// hands the GIL to the callers' event loop, and the worker building a forest waits for the loop's whole turn to get
// it back, several times a forest (docs/serving.md, seventh pass).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace {

// Adds `base` (0 <= base <= T's largest value: the caller checked that the forest's node count fits T) to every
// value >= 0. A value the shift would carry past T's largest stays at the largest: still past every request's nodes
// (the bounds check flags it as it flags the value itself), where a wrapped sum would be negative, a "no child".
template <class T>
void add_to_nonnegative(T* values, int64_t count, int64_t base) {
  const T shift = static_cast<T>(base);
  const T last = std::numeric_limits<T>::max() - shift;  // the largest value that can take the shift
  for (int64_t k = 0; k < count; ++k) {
    if constexpr (std::is_signed_v<T>) {
      if (values[k] < 0) continue;  // "no child" sentinels stay
    }
    values[k] = values[k] > last ? std::numeric_limits<T>::max() : static_cast<T>(values[k] + shift);
  }
}

// f(T{}) with T the integer type of `dt`; false for a dtype that is not an integer in this machine's byte order.
template <class F>
bool with_int_type(const py::dtype& dt, F&& f) {
  const bool sign = dt.kind() == 'i';
  if (!sign && dt.kind() != 'u') return false;
  if (!dt.attr("isnative").cast<bool>()) return false;  // byte-swapped: its bytes are not T's value
  switch (dt.itemsize()) {
    case 1: sign ? f(int8_t{}) : f(uint8_t{}); return true;
    case 2: sign ? f(int16_t{}) : f(uint16_t{}); return true;
    case 4: sign ? f(int32_t{}) : f(uint32_t{}); return true;
    case 8: sign ? f(int64_t{}) : f(uint64_t{}); return true;
    default: return false;
  }
}

// parts[r] concatenated along the first axis; with `bases`, request r's non-negative values get bases[r] added.
// Arrays of numbers only. Every part must have the first part's dtype and trailing shape (ValueError otherwise;
// merge.py promotes mixed dtypes first); parts that are not C-contiguous are copied first.
py::array concat_rows(const py::list& parts, const py::object& bases_obj) {
  const size_t n = parts.size();
  if (n == 0) throw py::value_error("concat_rows: no parts");
  std::vector<py::array> arrays;
  arrays.reserve(n);
  for (const py::handle& part : parts) {
    if (!py::isinstance<py::array>(part)) throw py::value_error("concat_rows: a part is not a numpy array");
    arrays.push_back(py::array::ensure(part, py::array::c_style));
    if (!arrays.back()) throw py::error_already_set();
  }
  const py::array& first = arrays[0];
  if (first.ndim() < 1) throw py::value_error("concat_rows: a part is a scalar");
  const py::dtype dtype = first.dtype();
  // plain numbers only: an object array's elements are references, which a byte copy would not count
  const char kind = dtype.kind();
  if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f' && kind != 'c')
    throw py::value_error("concat_rows: only arrays of numbers (bool, int, float, complex)");
  std::vector<py::ssize_t> shape(first.shape(), first.shape() + first.ndim());
  int64_t rows = 0;
  for (const py::array& a : arrays) {
    if (!a.dtype().is(dtype) && !a.dtype().equal(dtype)) throw py::value_error("concat_rows: dtypes differ");
    if (a.ndim() != first.ndim()) throw py::value_error("concat_rows: ranks differ");
    for (py::ssize_t d = 1; d < a.ndim(); ++d)
      if (a.shape(d) != first.shape(d)) throw py::value_error("concat_rows: trailing shapes differ");
    rows += a.shape(0);
  }
  const int64_t* bases = nullptr;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> bases_array;
  if (!bases_obj.is_none()) {
    bases_array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(bases_obj);
    if (!bases_array) throw py::error_already_set();
    if (bases_array.ndim() != 1 || static_cast<size_t>(bases_array.shape(0)) != n)
      throw py::value_error("concat_rows: bases must hold one value per part");
    if (!with_int_type(dtype, [](auto) {}))
      throw py::value_error("concat_rows: node ids must be integers (in native byte order)");
    bases = bases_array.data();
  }
  shape[0] = static_cast<py::ssize_t>(rows);
  py::array out(dtype, shape);
  char* at = static_cast<char*>(out.mutable_data());
  const size_t item = static_cast<size_t>(dtype.itemsize());
  auto copy_parts = [&](auto zero) {  // zero: a value of the ids' integer type (unused without bases)
    for (size_t r = 0; r < n; ++r) {
      const py::array& a = arrays[r];
      const int64_t count = static_cast<int64_t>(a.size());
      if (count == 0) continue;
      std::memcpy(at, a.data(), static_cast<size_t>(count) * item);
      if (bases != nullptr) add_to_nonnegative(reinterpret_cast<decltype(zero)*>(at), count, bases[r]);
      at += static_cast<size_t>(count) * item;
    }
  };
  if (bases != nullptr)
    with_int_type(dtype, copy_parts);  // the integer type looked up once, not once per part
  else
    copy_parts(int8_t{});
  return out;
}

template <class T>
void flag_outside(const T* values, int64_t width, const int64_t* rows, const int64_t* nodes, int64_t requests,
                  int64_t missing, std::vector<int64_t>& flagged) {
  int64_t row = 0, start = 0;
  for (int64_t r = 0; r < requests; ++r) {
    const int64_t stop = start + nodes[r];
    const T* v = values + row * width;
    for (int64_t k = 0, end = rows[r] * width; k < end; ++k) {
      if constexpr (std::is_same_v<T, uint64_t>) {
        if (v[k] > static_cast<uint64_t>(INT64_MAX)) {  // past int64: outside every request's nodes
          flagged.push_back(r);
          break;
        }
      }
      const int64_t x = static_cast<int64_t>(v[k]);
      if (x != missing && (x < start || x >= stop)) {
        flagged.push_back(r);
        break;
      }
    }
    row += rows[r];
    start = stop;
  }
}

// Requests of a merged forest whose rows of `values` (node ids; request r owns rows[r] consecutive rows and
// nodes[r] consecutive nodes, in order) hold a value other than `missing` outside the request's own node ids.
py::list rows_outside(const py::array& values_obj, const py::object& rows_obj,
                                  const py::object& nodes_obj, int64_t missing) {
  using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
  const py::array values = py::array::ensure(values_obj, py::array::c_style);
  const I64 rows = I64::ensure(rows_obj), nodes = I64::ensure(nodes_obj);
  if (!values || !rows || !nodes) throw py::error_already_set();
  if (values.ndim() < 1 || rows.ndim() != 1 || nodes.ndim() != 1 || rows.shape(0) != nodes.shape(0))
    throw py::value_error("rows_outside: values need rows, and rows and nodes one count per request");
  const int64_t requests = rows.shape(0);
  int64_t total = 0;
  for (int64_t r = 0; r < requests; ++r) {
    if (rows.data()[r] < 0 || nodes.data()[r] < 0) throw py::value_error("rows_outside: negative count");
    total += rows.data()[r];
  }
  if (total != values.shape(0)) throw py::value_error("rows_outside: the row counts do not add up to the values' rows");
  const int64_t width = values.shape(0) == 0 ? 0 : static_cast<int64_t>(values.size()) / values.shape(0);
  std::vector<int64_t> flagged;
  const bool integers = with_int_type(values.dtype(), [&](auto zero) {
    flag_outside(static_cast<const decltype(zero)*>(values.data()), width, rows.data(), nodes.data(), requests,
                 missing, flagged);
  });
  if (!integers) throw py::value_error("rows_outside: node ids must be integers (in native byte order)");
  py::list out;
  for (int64_t r : flagged) out.append(r);
  return out;
}

template <class T>
bool ids_in_range(const T* values, int64_t count, int64_t n, bool distinct) {
  std::vector<char> seen(distinct ? static_cast<size_t>(n) : 0, 0);
  for (int64_t k = 0; k < count; ++k) {
    if constexpr (std::is_signed_v<T>) {
      if (values[k] < 0) return false;
    }
    if (static_cast<uint64_t>(values[k]) >= static_cast<uint64_t>(n)) return false;
    if (distinct) {
      char& s = seen[static_cast<size_t>(values[k])];
      if (s) return false;
      s = 1;
    }
  }
  return true;
}

// Every value of an integer array lies in [0, n), and with `distinct` none repeats; false for any other array (a
// request's visit order: a permutation of its n nodes when it also has n values). One call in place of numpy's min,
// max and bincount.
bool ids_within(const py::array& values_obj, int64_t n, bool distinct) {
  const py::array values = py::array::ensure(values_obj, py::array::c_style);
  if (!values) throw py::error_already_set();
  if (n < 0) return values.size() == 0;
  bool ok = false;  // stays false for an array that is not of integers: those are no node ids
  with_int_type(values.dtype(), [&](auto zero) {
    ok = ids_in_range(static_cast<const decltype(zero)*>(values.data()), static_cast<int64_t>(values.size()), n,
                      distinct);
  });
  return ok;
}

// check_request's common path for one request, in one call (every request passes it, on its caller's thread, where
// the same checks in Python cost more than the rest of queueing it): `feeds` holds exactly the inputs of `names`, each
// exactly a numpy.ndarray of dtype dtypes[k] and shape [rows, *tails[k]]; inputs of one unit (units[k], an index
// below unit_count) agree on their rows; the inputs at `orders` (indices into names) are permutations of the nodes
// (unit node_unit) and those at `ids` hold node ids only. Returns each unit's rows, or None when anything differs:
// check_request then finds the input and words the reason.
py::object request_rows(const py::dict& feeds, const py::tuple& names, const py::tuple& dtypes, const py::tuple& tails,
                        const py::tuple& units, int64_t unit_count, int64_t node_unit, const py::tuple& orders,
                        const py::tuple& ids) {
  static PyObject* const ndarray = py::object(py::module_::import("numpy").attr("ndarray")).release().ptr();
  const size_t n = names.size();
  if (dtypes.size() != n || tails.size() != n || units.size() != n || node_unit < 0 || node_unit >= unit_count)
    throw py::value_error("request_rows: one dtype, tail and unit per name, and the nodes' unit among the units");
  if (static_cast<size_t>(PyDict_Size(feeds.ptr())) != n) return py::none();
  std::vector<int64_t> rows(static_cast<size_t>(unit_count), -1);
  std::vector<py::array> arrays;
  arrays.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    PyObject* value = PyDict_GetItem(feeds.ptr(), names[k].ptr());  // borrowed; null when missing
    if (value == nullptr || reinterpret_cast<PyObject*>(Py_TYPE(value)) != ndarray) return py::none();
    const auto array = py::reinterpret_borrow<py::array>(value);
    const py::dtype dtype = array.dtype();
    if (!dtype.is(dtypes[k])) {
      const int same = PyObject_RichCompareBool(dtype.ptr(), dtypes[k].ptr(), Py_EQ);
      if (same < 0) throw py::error_already_set();
      if (!same) return py::none();
    }
    const auto tail = py::reinterpret_borrow<py::tuple>(tails[k]);
    if (array.ndim() != static_cast<py::ssize_t>(tail.size()) + 1) return py::none();
    for (size_t d = 0; d < tail.size(); ++d)
      if (array.shape(static_cast<py::ssize_t>(d) + 1) != tail[d].cast<py::ssize_t>()) return py::none();
    const auto unit = units[k].cast<int64_t>();
    if (unit < 0 || unit >= unit_count) throw py::value_error("request_rows: a unit index out of range");
    int64_t& count = rows[static_cast<size_t>(unit)];
    if (count >= 0 && count != array.shape(0)) return py::none();
    count = array.shape(0);
    arrays.push_back(array);
  }
  const int64_t nodes = rows[static_cast<size_t>(node_unit)];
  for (const py::handle& k : orders) {
    const py::array& order = arrays.at(k.cast<size_t>());
    if (order.shape(0) != nodes || !ids_within(order, nodes, true)) return py::none();
  }
  for (const py::handle& k : ids)
    if (!ids_within(arrays.at(k.cast<size_t>()), nodes, false)) return py::none();
  py::list out;
  for (int64_t count : rows) out.append(count);
  return std::move(out);
}

}  // namespace

// [sum(nodes), 2] int64: row v holds the first and the end (one past the last) node of the request that owns node v,
// the requests' nodes consecutive in order (cortex/serving/windows.py: the merge's window input W).
py::array_t<int64_t> request_windows(const py::object& nodes_obj) {
  using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
  I64 nodes = I64::ensure(nodes_obj);
  if (!nodes) throw py::error_already_set();
  if (nodes.ndim() != 1) throw py::value_error("request_windows: nodes must be one count per request");
  const int64_t* counts = nodes.data();
  int64_t total = 0;
  for (py::ssize_t r = 0; r < nodes.shape(0); ++r) {
    if (counts[r] < 0 || counts[r] > std::numeric_limits<int64_t>::max() - total)
      throw py::value_error("request_windows: a node count is negative or the total overflows");
    total += counts[r];
  }
  py::array_t<int64_t> out({static_cast<py::ssize_t>(total), static_cast<py::ssize_t>(2)});
  int64_t* w = out.mutable_data();
  int64_t first = 0;
  for (py::ssize_t r = 0; r < nodes.shape(0); ++r) {
    const int64_t end = first + counts[r];
    for (int64_t v = first; v < end; ++v) {
      w[2 * v] = first;
      w[2 * v + 1] = end;
    }
    first = end;
  }
  return out;
}

// Requests of a merged TreeRec forest whose nodes reach themselves through their children (a cycle, which the
// kernel refuses for the whole forest): children [sum(nodes), K] of merged node ids, request r owning nodes[r]
// consecutive nodes. Child ids outside the request's own nodes (-1, "no child", or ids the bounds check flags) are
// not edges. Kahn's algorithm per request: a node is done once its children are; whatever is left is on or above a
// cycle. Only a merged run that failed asks (forest.py), so a request's cycle costs nothing until one does.
py::list requests_with_cycles(const py::object& children_obj, const py::object& nodes_obj) {
  using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
  const I64 children = I64::ensure(children_obj), nodes = I64::ensure(nodes_obj);
  if (!children || !nodes) throw py::error_already_set();
  if (children.ndim() != 2 || nodes.ndim() != 1)
    throw py::value_error("requests_with_cycles: children [nodes, K] and one node count per request");
  const int64_t width = children.shape(1), requests = nodes.shape(0);
  int64_t total = 0;
  for (int64_t r = 0; r < requests; ++r) {
    if (nodes.data()[r] < 0) throw py::value_error("requests_with_cycles: negative count");
    total += nodes.data()[r];
  }
  if (total != children.shape(0)) throw py::value_error("requests_with_cycles: the node counts do not add up");
  std::vector<int64_t> pending, first_parent, parents, ready;  // per request, by node - base
  py::list out;
  int64_t base = 0;
  for (int64_t r = 0; r < requests; ++r) {
    const int64_t n = nodes.data()[r];
    const int64_t* c = children.data() + base * width;  // the request's rows; its ids are base + [0, n)
    auto own = [&](int64_t id) { return id >= base && id < base + n; };
    pending.assign(static_cast<size_t>(n), 0);        // children not done yet
    first_parent.assign(static_cast<size_t>(n) + 1, 0);  // node u's parents: parents[first_parent[u], ...[u + 1])
    for (int64_t k = 0; k < n * width; ++k) {
      if (own(c[k])) {
        ++pending[k / width];
        ++first_parent[c[k] - base + 1];
      }
    }
    for (int64_t u = 0; u < n; ++u) first_parent[u + 1] += first_parent[u];
    parents.assign(static_cast<size_t>(first_parent[n]), 0);
    std::vector<int64_t> next(first_parent.begin(), first_parent.end() - 1);
    for (int64_t k = 0; k < n * width; ++k) {
      if (own(c[k])) parents[next[c[k] - base]++] = k / width;
    }
    ready.clear();
    for (int64_t v = 0; v < n; ++v) {
      if (pending[v] == 0) ready.push_back(v);
    }
    int64_t done = 0;
    while (!ready.empty()) {
      const int64_t u = ready.back();
      ready.pop_back();
      ++done;
      for (int64_t q = first_parent[u]; q < first_parent[u + 1]; ++q) {
        if (--pending[parents[q]] == 0) ready.push_back(parents[q]);
      }
    }
    if (done != n) out.append(r);
    base += n;
  }
  return out;
}

void register_forest_rows(py::module_& m) {
  m.def("requests_with_cycles", &requests_with_cycles, py::arg("children"), py::arg("nodes"),
        "Requests (indices) of a merged TreeRec forest whose nodes reach themselves through their children.");
  m.def("request_windows", &request_windows, py::arg("nodes"),
        "[sum(nodes), 2] int64: each node's request's first and end node (requests' nodes consecutive)");
  m.def("concat_rows", &concat_rows, py::arg("parts"), py::arg("bases") = py::none(),
        "parts (numpy arrays of one dtype and trailing shape) concatenated along axis 0; with bases (one per part, "
        "int32/int64 parts), each part's non-negative values get its base added. One call, the GIL kept.");
  m.def("rows_outside", &rows_outside, py::arg("values"), py::arg("rows"), py::arg("nodes"), py::arg("missing"),
        "Requests (indices) whose rows of a merged node-id array hold a value other than missing outside their own "
        "nodes (request r: rows[r] rows, nodes[r] nodes, consecutive).");
  m.def("request_rows", &request_rows, py::arg("feeds"), py::arg("names"), py::arg("dtypes"), py::arg("tails"),
        py::arg("units"), py::arg("unit_count"), py::arg("node_unit"), py::arg("orders"), py::arg("ids"),
        "One request's rows per unit when its feeds are exactly the named numpy arrays of the given dtypes and shapes "
        "[rows, *tail], inputs of one unit agree, orders are permutations of the nodes and ids node ids; else None.");
  m.def("ids_within", &ids_within, py::arg("values"), py::arg("n"), py::arg("distinct") = false,
        "Every value of an integer array in [0, n), and with distinct no value twice (False for non-integer arrays).");
}
