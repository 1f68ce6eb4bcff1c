#pragma once
// Little helpers for parsing untrusted binary formats: little-endian loads and overflow-checked arithmetic.
// Every size read from a file goes through these before it is used to index memory.
#include <cstdint>
#include <cstring>

namespace kestrel::bytes {

inline uint16_t le16(const unsigned char* p) {
  return uint16_t(p[0] | (p[1] << 8));
}
inline uint32_t le32(const unsigned char* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t le64(const unsigned char* p) {
  return uint64_t(le32(p)) | (uint64_t(le32(p + 4)) << 32);
}

// false on overflow; *out is then unspecified.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

// Is [begin, begin + len) inside a buffer of `size` bytes?
inline bool in_bounds(uint64_t begin, uint64_t len, uint64_t size) {
  return begin <= size && len <= size - begin;
}

}  // namespace kestrel::bytes
