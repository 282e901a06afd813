// Runs a generated Cortex kernel from several threads at once, for ThreadSanitizer (tools/sanitize.sh).
//
//   kernel_driver KERNEL.so GOOD.bin BAD.bin THREADS RUNS
//
// GOOD.bin / BAD.bin hold the kernel's inputs (tools/sanitize/prepare.py writes them): a run on GOOD must succeed
// and give, bit for bit, what the first single-threaded run gave; a run on BAD must fail with a message. Each of
// THREADS threads makes RUNS runs, every third one on BAD, so the kernel's workspace pool, the shared
// thread pool (parallel.h: regions, nested and concurrent callers, exceptions cut short) and the linearizer all run
// concurrently. Exit status 0 when every run behaved.
#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kernel_abi.h"

namespace {

struct Tensor {
  int32_t dtype = 0;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

bool ReadInputs(const char* path, std::vector<Tensor>* tensors) {
  std::ifstream in(path, std::ios::binary);
  char magic[4];
  uint32_t count = 0;
  if (!in.read(magic, 4) || std::memcmp(magic, "CXIN", 4) != 0 || !in.read(reinterpret_cast<char*>(&count), 4)) {
    return false;
  }
  tensors->resize(count);
  for (Tensor& t : *tensors) {
    int32_t rank = 0;
    uint64_t bytes = 0;
    if (!in.read(reinterpret_cast<char*>(&t.dtype), 4) || !in.read(reinterpret_cast<char*>(&rank), 4)) return false;
    t.shape.resize(static_cast<size_t>(rank));
    if (rank > 0 && !in.read(reinterpret_cast<char*>(t.shape.data()), 8 * rank)) return false;
    if (!in.read(reinterpret_cast<char*>(&bytes), 8)) return false;
    t.data.resize(bytes + 8);  // never empty: a zero-size tensor still gets a valid pointer
    if (bytes > 0 && !in.read(t.data.data(), static_cast<std::streamsize>(bytes))) return false;
  }
  return true;
}

std::vector<CortexTensor> View(const std::vector<Tensor>& tensors) {
  std::vector<CortexTensor> view;
  for (const Tensor& t : tensors) {
    view.push_back(CortexTensor{t.data.data(), t.shape.data(), static_cast<int32_t>(t.shape.size()), t.dtype,
                                CORTEX_DEVICE_CPU, 0});
  }
  return view;
}

struct Outputs {
  std::vector<std::vector<float>> buffers;
  std::vector<std::vector<int64_t>> shapes;

  static void* Allocate(void* self, int32_t index, const int64_t* shape, int32_t rank) {
    auto* outputs = static_cast<Outputs*>(self);
    if (index < 0 || index > 64 || rank < 0) return nullptr;
    if (outputs->buffers.size() <= static_cast<size_t>(index)) {
      outputs->buffers.resize(index + 1);
      outputs->shapes.resize(index + 1);
    }
    size_t elements = 1;
    for (int32_t d = 0; d < rank; ++d) elements *= static_cast<size_t>(shape[d]);
    outputs->buffers[index].assign(elements + 1, 0.0f);  // state tables are float32
    outputs->shapes[index].assign(shape, shape + rank);
    return outputs->buffers[index].data();
  }

  bool operator==(const Outputs& other) const {
    if (shapes != other.shapes || buffers.size() != other.buffers.size()) return false;
    for (size_t i = 0; i < buffers.size(); ++i) {
      if (std::memcmp(buffers[i].data(), other.buffers[i].data(), buffers[i].size() * sizeof(float)) != 0) {
        return false;
      }
    }
    return true;
  }
};

using RunFn = decltype(&cortex_kernel_run);

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s KERNEL.so GOOD.bin BAD.bin THREADS RUNS\n", argv[0]);
    return 2;
  }
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto run = reinterpret_cast<RunFn>(dlsym(library, "cortex_kernel_run"));
  std::vector<Tensor> good, bad;
  if (run == nullptr || !ReadInputs(argv[2], &good) || !ReadInputs(argv[3], &bad)) {
    std::fprintf(stderr, "bad kernel or input files\n");
    return 2;
  }
  const int threads = std::atoi(argv[4]), runs = std::atoi(argv[5]);
  const std::vector<CortexTensor> good_view = View(good), bad_view = View(bad);

  Outputs reference;
  char message[1024] = {0};
  const CortexExecution cpu{CORTEX_DEVICE_CPU, 0, nullptr};
  if (run(good_view.data(), static_cast<int32_t>(good_view.size()), &Outputs::Allocate, &reference, &cpu, message,
          sizeof(message)) != 0) {
    std::fprintf(stderr, "the reference run failed: %s\n", message);
    return 1;
  }

  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int r = 0; r < runs; ++r) {
        const bool expect_error = (r + t) % 3 == 2;
        const std::vector<CortexTensor>& inputs = expect_error ? bad_view : good_view;
        Outputs outputs;
        char error[1024] = {0};
        const int32_t rc = run(inputs.data(), static_cast<int32_t>(inputs.size()), &Outputs::Allocate, &outputs,
                               &cpu, error, sizeof(error));
        const bool ok = expect_error ? (rc != 0 && error[0] != '\0') : (rc == 0 && outputs == reference);
        if (!ok) {
          std::fprintf(stderr, "thread %d run %d: rc %d (%s)%s\n", t, r, rc, error,
                       expect_error ? ", expected an error" : ", outputs differ from the reference");
          failures.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();
  std::printf("kernel_driver: %s: %d threads x %d runs, %d failures\n", argv[1], threads, runs, failures.load());
  return failures.load() == 0 ? 0 : 1;
}
