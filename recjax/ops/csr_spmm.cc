// CSR sparse x dense matmul for XLA's CPU backend (jax.ffi custom call).
//
// out[r, :] = sum_{e in indptr[r]..indptr[r+1]} weights[e] * x[indices[e], :]
//
// Why a kernel: XLA on CPU lowers gather + segment_sum to a generic scatter
// loop that is ~10x slower than this row-parallel CSR loop, and graph
// propagation (LightGCN) spends nearly all its time there. Rows are split
// across OpenMP threads with dynamic scheduling because degrees are
// power-law distributed.
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error CsrSpmmImpl(ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::S32> indptr,
                              ffi::Buffer<ffi::S32> indices,
                              ffi::Buffer<ffi::F32> weights,
                              ffi::ResultBuffer<ffi::F32> out) {
  auto xdims = x.dimensions();
  if (xdims.size() != 2) {
    return ffi::Error::InvalidArgument("csr_spmm: x must be 2-D [N, D]");
  }
  const int64_t d = xdims[1];
  const int64_t n_in = xdims[0];
  const int64_t n_out = indptr.element_count() - 1;
  auto odims = out->dimensions();
  if (odims.size() != 2 || odims[0] != n_out || odims[1] != d) {
    return ffi::Error::InvalidArgument("csr_spmm: bad output shape");
  }
  if (indices.element_count() != weights.element_count()) {
    return ffi::Error::InvalidArgument(
        "csr_spmm: indices and weights differ in length");
  }
  const float* X = x.typed_data();
  const int32_t* ip = indptr.typed_data();
  const int32_t* idx = indices.typed_data();
  const float* w = weights.typed_data();
  float* Y = out->typed_data();
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 64) reduction(| : bad)
  for (int64_t r = 0; r < n_out; ++r) {
    float* y = Y + r * d;
    std::memset(y, 0, sizeof(float) * d);
    for (int32_t e = ip[r]; e < ip[r + 1]; ++e) {
      const int64_t c = idx[e];
      if (c < 0 || c >= n_in) { bad = 1; continue; }
      const float* xr = X + c * d;
      const float we = w[e];
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) y[k] += we * xr[k];
    }
  }
  if (bad) return ffi::Error::InvalidArgument("csr_spmm: index out of range");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrSpmm, CsrSpmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
