#pragma once
// A restricted unpickler for the data.pkl of torch.save's zip format. It understands only what a state dict
// pickles to: dicts/OrderedDicts of tensors rebuilt by torch._utils._rebuild_tensor_v2 from persistent
// storage ids. Any other global (os.system, builtins.eval, ...) or an opcode outside that subset is an error,
// so a hostile checkpoint can never run code. Takes a byte buffer so the fuzzer needs no disk.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kestrel {

// One tensor as the pickle describes it; the bytes live in the archive entry data/<storage_key>.
struct PickledTensor {
  std::string name;
  std::string storage_key;
  DType dtype = DType::F32;    // from the storage class (FloatStorage -> F32, ...)
  int64_t storage_numel = 0;   // elements in the storage, from the persistent id
  int64_t storage_offset = 0;  // in elements
  Shape shape;
  std::vector<int64_t> stride;  // in elements
};

// Parses a state-dict pickle; throws kestrel::Error naming `label` on anything outside the safe subset.
// Tensors come back in pickle order. Offsets and strides are not yet checked against the storage.
std::vector<PickledTensor> parse_torch_pickle(const unsigned char* data, size_t size,
                                              const std::string& label);

}  // namespace kestrel
