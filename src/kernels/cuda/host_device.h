// KESTREL_HOST_DEVICE: functions that the CUDA kernels call and host tests check (staged_count.h,
// argmax_key.h); plain functions where nvcc does not compile the file.
#pragma once

#if defined(__CUDACC__)
#define KESTREL_HOST_DEVICE __host__ __device__
#else
#define KESTREL_HOST_DEVICE
#endif
