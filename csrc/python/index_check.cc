// cortex._C.eval_index and check_positions: a recursion's index expressions evaluated over every position of a
// merged forest, and the per-batch bounds check built on them (cortex/serving/indexeval.py compiles the expressions
// into the instructions below). The same semantics as indexeval._Evaluator, the reference the tests hold this to;
// one call that keeps the GIL, where numpy's one ufunc per expression handed the GIL to the callers' event loop at
// every step (docs/serving.md, seventh and eighth passes).
//
// An instruction is a row of six int64: op, three operands (earlier instructions' results) and two immediates.
// Each instruction's result over all positions is a register: a value (int64, or 0/1 for a predicate) and a
// trouble flag (evaluating it there would fail in the kernel: an index out of range, a division by zero, a guard).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace py = pybind11;

namespace {

// Kept in step with indexeval._OPS.
enum Op : int64_t {
  kIter, kConst, kLength, kLoad, kAdd, kSub, kMul, kMax, kMin, kDiv, kFloorDiv, kMod, kFmod, kSelect, kGuard,
  kLt, kLe, kGt, kGe, kEq, kNe, kNot, kAnd, kOr, kOpCount
};

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

struct Table {  // a Load's array: int64 rows of `columns` values (a 0-D array: one value, scalar)
  const int64_t* data;
  int64_t rows, columns;
  bool scalar;
};

// Wrapping arithmetic: int64 overflow in an index is the request's problem, never undefined behaviour here.
inline int64_t wrap_add(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) + b); }
inline int64_t wrap_sub(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) - b); }
inline int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

// a op d for d != 0, as the kernel computes it (C++ integer division; -1 divides without trapping on INT64_MIN).
int64_t divide(int64_t op, int64_t a, int64_t d) {
  if (d == -1) return (op == kDiv || op == kFloorDiv) ? wrap_sub(0, a) : 0;
  const int64_t q = a / d, r = a % d;
  switch (op) {
    case kDiv: return q;
    case kFloorDiv: return (r != 0 && ((r < 0) != (d < 0))) ? q - 1 : q;
    case kMod: return (r != 0 && ((r < 0) != (d < 0))) ? r + d : r;
    default: return r;  // fmod: the sign of the dividend
  }
}

class Machine {
 public:
  Machine(const I64& code, const py::list& arrays, const I64& lengths, int64_t count)
      : count_(count), lengths_(lengths) {
    if (code.ndim() != 2 || code.shape(1) != 6) throw py::value_error("eval_index: code must be [n, 6] int64");
    if (lengths.ndim() != 1) throw py::value_error("eval_index: lengths must be 1-D");
    if (count < 0) throw py::value_error("eval_index: negative position count");
    n_ = code.shape(0);
    code_ = code.data();
    for (const py::handle& a : arrays) {
      I64 array = I64::ensure(a);  // bool and narrower integers read as int64 (a copy, the GIL kept)
      if (!array) throw py::error_already_set();
      const int64_t rows = array.ndim() == 0 ? 1 : array.shape(0);
      const int64_t columns = (array.ndim() == 0 || rows == 0) ? 1 : static_cast<int64_t>(array.size()) / rows;
      tables_.push_back({array.data(), rows, columns, array.ndim() == 0});
      keep_.push_back(std::move(array));
    }
    for (int64_t i = 0; i < n_; ++i) validate(i);
    value_.assign(static_cast<size_t>(n_ * count_), 0);
    trouble_.assign(static_cast<size_t>(n_ * count_), 0);
    for (int64_t i = 0; i < n_; ++i) run(i);
  }

  int64_t size() const { return n_; }
  const int64_t* value(int64_t reg) const { return value_.data() + reg * count_; }
  const uint8_t* trouble(int64_t reg) const { return trouble_.data() + reg * count_; }

  void check_register(int64_t reg) const {
    if (reg < 0 || reg >= n_) throw py::value_error("eval_index: register out of range");
  }

 private:
  const int64_t* row(int64_t i) const { return code_ + i * 6; }

  // Operands name earlier instructions; immediates name tables and lengths that exist.
  void validate(int64_t i) const {
    const int64_t* c = row(i);
    if (c[0] < 0 || c[0] >= kOpCount) throw py::value_error("eval_index: unknown op");
    const int operands = c[0] == kSelect ? 3 : (c[0] >= kAdd && c[0] != kNot) ? 2
                         : (c[0] == kLoad || c[0] == kNot) ? 1 : 0;
    for (int k = 0; k < 3; ++k)  // unused operand fields hold 0 (every field names an existing register)
      if (k < operands ? (c[1 + k] < 0 || c[1 + k] >= i) : c[1 + k] != 0)
        throw py::value_error("eval_index: an operand is not an earlier result");
    if (c[0] == kLoad && (c[4] < 0 || c[4] >= static_cast<int64_t>(tables_.size())))
      throw py::value_error("eval_index: load from an array not passed");
    if (c[0] == kLength && (c[4] < 0 || c[4] >= lengths_.shape(0)))
      throw py::value_error("eval_index: a length not passed");
  }

  void run(int64_t i) {
    const int64_t* c = row(i);
    int64_t* v = value_.data() + i * count_;
    uint8_t* t = trouble_.data() + i * count_;
    const int64_t* a = value_.data() + c[1] * count_;
    const int64_t* b = value_.data() + c[2] * count_;
    const int64_t* x = value_.data() + c[3] * count_;
    const uint8_t* ta = trouble_.data() + c[1] * count_;
    const uint8_t* tb = trouble_.data() + c[2] * count_;
    const uint8_t* tx = trouble_.data() + c[3] * count_;
    const int64_t n = count_;
    switch (c[0]) {
      case kIter:
        for (int64_t p = 0; p < n; ++p) v[p] = p;
        return;
      case kConst:
        for (int64_t p = 0; p < n; ++p) v[p] = c[4];
        return;
      case kLength: {
        const int64_t length = lengths_.data()[c[4]];
        for (int64_t p = 0; p < n; ++p) v[p] = length;
        return;
      }
      case kLoad: load(tables_[static_cast<size_t>(c[4])], c[5], a, ta, v, t);
        return;
      case kAdd: for (int64_t p = 0; p < n; ++p) v[p] = wrap_add(a[p], b[p]), t[p] = ta[p] | tb[p]; return;
      case kSub: for (int64_t p = 0; p < n; ++p) v[p] = wrap_sub(a[p], b[p]), t[p] = ta[p] | tb[p]; return;
      case kMul: for (int64_t p = 0; p < n; ++p) v[p] = wrap_mul(a[p], b[p]), t[p] = ta[p] | tb[p]; return;
      case kMax: for (int64_t p = 0; p < n; ++p) v[p] = a[p] > b[p] ? a[p] : b[p], t[p] = ta[p] | tb[p]; return;
      case kMin: for (int64_t p = 0; p < n; ++p) v[p] = a[p] < b[p] ? a[p] : b[p], t[p] = ta[p] | tb[p]; return;
      case kDiv: case kFloorDiv: case kMod: case kFmod:
        for (int64_t p = 0; p < n; ++p) {
          const bool zero = b[p] == 0;
          v[p] = zero ? 0 : divide(c[0], a[p], b[p]);
          t[p] = ta[p] | tb[p] | zero;
        }
        return;
      case kSelect:  // pred ? a : b; only the chosen side's trouble counts
        for (int64_t p = 0; p < n; ++p) v[p] = a[p] ? b[p] : x[p], t[p] = ta[p] | (a[p] ? tb[p] : tx[p]);
        return;
      case kGuard:  // the value, failing where the predicate does not hold
        for (int64_t p = 0; p < n; ++p) v[p] = b[p], t[p] = ta[p] | tb[p] | !a[p];
        return;
      case kLt: for (int64_t p = 0; p < n; ++p) v[p] = a[p] < b[p], t[p] = ta[p] | tb[p]; return;
      case kLe: for (int64_t p = 0; p < n; ++p) v[p] = a[p] <= b[p], t[p] = ta[p] | tb[p]; return;
      case kGt: for (int64_t p = 0; p < n; ++p) v[p] = a[p] > b[p], t[p] = ta[p] | tb[p]; return;
      case kGe: for (int64_t p = 0; p < n; ++p) v[p] = a[p] >= b[p], t[p] = ta[p] | tb[p]; return;
      case kEq: for (int64_t p = 0; p < n; ++p) v[p] = a[p] == b[p], t[p] = ta[p] | tb[p]; return;
      case kNe: for (int64_t p = 0; p < n; ++p) v[p] = a[p] != b[p], t[p] = ta[p] | tb[p]; return;
      case kNot: for (int64_t p = 0; p < n; ++p) v[p] = !a[p], t[p] = ta[p]; return;
      case kAnd:  // the kernel's && does not evaluate b where a is false
        for (int64_t p = 0; p < n; ++p) v[p] = a[p] && b[p], t[p] = ta[p] | (a[p] && tb[p]);
        return;
      case kOr:
        for (int64_t p = 0; p < n; ++p) v[p] = a[p] || b[p], t[p] = ta[p] | (!a[p] && tb[p]);
        return;
      default: return;
    }
  }

  // ONNX Gather on the rows: a negative index counts from the end, one out of range is trouble.
  void load(const Table& table, int64_t column, const int64_t* index, const uint8_t* index_trouble, int64_t* v,
            uint8_t* t) const {
    const int64_t n = count_;
    if (table.scalar) {
      for (int64_t p = 0; p < n; ++p) v[p] = table.data[0], t[p] = index_trouble[p];
      return;
    }
    const int64_t col = column < 0 ? 0 : column, rows = table.rows;
    if (rows == 0 || col >= table.columns) {
      for (int64_t p = 0; p < n; ++p) v[p] = 0, t[p] = 1;
      return;
    }
    for (int64_t p = 0; p < n; ++p) {
      const int64_t k = index[p];
      const bool outside = k < -rows || k >= rows;
      v[p] = outside ? 0 : table.data[(k < 0 ? k + rows : k) * table.columns + col];
      t[p] = index_trouble[p] | outside;
    }
  }

  int64_t n_ = 0, count_;
  const int64_t* code_ = nullptr;
  const I64& lengths_;
  std::vector<Table> tables_;
  std::vector<I64> keep_;
  std::vector<int64_t> value_;
  std::vector<uint8_t> trouble_;
};

// The values and trouble flags of `registers` over `count` positions (the tests' view of the machine).
py::tuple eval_index(const I64& code, const py::list& arrays, const I64& lengths, int64_t count,
                     const py::list& registers) {
  const Machine m(code, arrays, lengths, count);
  py::list values, troubles;
  for (const py::handle& h : registers) {
    const int64_t reg = h.cast<int64_t>();
    m.check_register(reg);
    I64 v(count);
    py::array_t<bool> t(count);
    std::copy(m.value(reg), m.value(reg) + count, v.mutable_data());
    for (int64_t p = 0; p < count; ++p) t.mutable_data()[p] = m.trouble(reg)[p] != 0;
    values.append(v);
    troubles.append(t);
  }
  return py::make_tuple(values, troubles);
}

struct Use {  // a row index a case reads, and whether -1 ("no child", zero rows) is in bounds for it
  int64_t reg;
  bool missing_zero;
  int64_t rows;  // -1: a row of the request's own nodes; else a table every request shares, read with Gather
                 // semantics (an embedding: -rows <= index < rows), which merging leaves as it is
};

struct Case {
  int64_t predicate;
  std::vector<Use> tested, used;  // read to evaluate the predicate; read where it holds
};

// Requests (indices, ascending) of a merged forest that read outside their own rows or would fail. Request r owns
// position_counts[r] consecutive positions and node_counts[r] consecutive node ids. At each position the cases are
// tried in order, as the kernel does: a case's predicate is evaluated where no earlier case was taken (its reads
// must be in bounds and succeed), and the rows a taken case uses must be the request's own (or, for a shared table's
// rows, within that table: a read past an embedding would fail the whole forest).
py::list check_positions(const I64& code, const py::list& arrays, const I64& lengths, const py::list& cases_obj,
                         const I64& node_counts, const I64& position_counts) {
  if (node_counts.ndim() != 1 || position_counts.ndim() != 1 || node_counts.shape(0) != position_counts.shape(0))
    throw py::value_error("check_positions: one node count and one position count per request");
  const int64_t requests = node_counts.shape(0);
  int64_t count = 0;
  for (int64_t r = 0; r < requests; ++r) {
    if (node_counts.data()[r] < 0 || position_counts.data()[r] < 0)
      throw py::value_error("check_positions: negative count");
    count += position_counts.data()[r];
  }
  const Machine m(code, arrays, lengths, count);
  std::vector<Case> cases;
  for (const py::handle& h : cases_obj) {
    const auto item = h.cast<py::tuple>();
    if (item.size() != 3) throw py::value_error("check_positions: a case is (predicate, tested, used)");
    Case c{item[0].cast<int64_t>(), {}, {}};
    m.check_register(c.predicate);
    for (int k = 0; k < 2; ++k) {
      for (const py::handle& u : item[1 + k].cast<py::list>()) {
        const auto use_tuple = u.cast<py::tuple>();
        if (use_tuple.size() != 3) throw py::value_error("check_positions: a use is (register, missing_zero, rows)");
        const Use use{use_tuple[0].cast<int64_t>(), use_tuple[1].cast<bool>(), use_tuple[2].cast<int64_t>()};
        if (use.rows < -1) throw py::value_error("check_positions: a use's rows must be -1 or a row count");
        m.check_register(use.reg);
        (k == 0 ? c.tested : c.used).push_back(use);
      }
    }
    cases.push_back(std::move(c));
  }
  auto outside = [&](const std::vector<Use>& uses, int64_t p, int64_t base, int64_t stop) {
    for (const Use& u : uses) {
      const int64_t v = m.value(u.reg)[p];
      if (m.trouble(u.reg)[p]) return true;
      if (u.rows >= 0) {
        if (v < -u.rows || v >= u.rows) return true;
      } else if (!((v >= base && v < stop) || (u.missing_zero && v == -1))) {
        return true;
      }
    }
    return false;
  };
  py::list flagged;
  int64_t p = 0, base = 0;
  for (int64_t r = 0; r < requests; ++r) {
    const int64_t stop = base + node_counts.data()[r], end = p + position_counts.data()[r];
    bool bad = false;
    for (; p < end; ++p) {
      if (bad) continue;
      bool selected = false;
      for (const Case& c : cases) {
        if (selected) break;
        const bool taken = m.value(c.predicate)[p] != 0;
        if (m.trouble(c.predicate)[p] || outside(c.tested, p, base, stop) ||
            (taken && outside(c.used, p, base, stop))) {
          bad = true;
          break;
        }
        selected = taken;
      }
    }
    if (bad) flagged.append(r);
    base = stop;
  }
  return flagged;
}

}  // namespace

void register_index_check(py::module_& m) {
  m.def("eval_index", &eval_index, py::arg("code"), py::arg("arrays"), py::arg("lengths"), py::arg("count"),
        py::arg("registers"),
        "Index-expression instructions (indexeval.compile) over count positions: ([values], [trouble]) of the "
        "given registers.");
  m.def("check_positions", &check_positions, py::arg("code"), py::arg("arrays"), py::arg("lengths"),
        py::arg("cases"), py::arg("node_counts"), py::arg("position_counts"),
        "Requests of a merged forest whose positions read outside their own rows or would fail (indexeval's "
        "bounds check): one call, the GIL kept.");
}
