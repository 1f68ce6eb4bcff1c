#include "io/torch_pickle.h"

#include <cstring>
#include <map>
#include <memory>
#include <unordered_map>

#include "core/error.h"
#include "io/bytes.h"

namespace kestrel {
namespace {

// Storage classes torch.save names in persistent ids, and the element type each holds.
const std::map<std::string, DType, std::less<>>& storage_dtypes() {
  static const std::map<std::string, DType, std::less<>> m = {
      {"torch.FloatStorage", DType::F32},     {"torch.HalfStorage", DType::F16},
      {"torch.BFloat16Storage", DType::BF16}, {"torch.DoubleStorage", DType::F64},
      {"torch.LongStorage", DType::I64},      {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16},     {"torch.CharStorage", DType::I8},
      {"torch.ByteStorage", DType::U8},       {"torch.BoolStorage", DType::Bool},
  };
  return m;
}

// A state dict pickles to about 25 objects per tensor; far more than this is a hostile file trying to exhaust
// memory, not a checkpoint.
constexpr size_t kMaxObjects = 4'000'000;

constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";

bool allowed_global(const std::string& name) {
  return name == kOrderedDict || name == kRebuildTensorV2 || name == kRebuildParameter ||
         storage_dtypes().count(name) != 0;
}

// A pickled object. Values live in the unpickler's arena and point at each other with raw pointers, so
// self-referencing containers (legal in pickle) cannot leak or recurse on destruction.
struct Value {
  enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t i = 0;                          // Bool, Int; Storage: numel
  double f = 0;                           // Float
  std::string s;                          // String text; Global "module.name"; Storage key
  std::vector<Value*> items;              // Tuple/List elements; Dict: key, value, key, value, ...
  DType dtype = DType::F32;               // Storage
  std::unique_ptr<PickledTensor> tensor;  // Tensor (out of line: most values are small)
};

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return "bool";
    case Value::Kind::Int:
      return "int";
    case Value::Kind::Float:
      return "float";
    case Value::Kind::String:
      return "str";
    case Value::Kind::Tuple:
      return "tuple";
    case Value::Kind::List:
      return "list";
    case Value::Kind::Dict:
      return "dict";
    case Value::Kind::Global:
      return "global";
    case Value::Kind::Storage:
      return "storage";
    case Value::Kind::Tensor:
      return "tensor";
  }
  return "?";
}

class Unpickler {
 public:
  Unpickler(const unsigned char* data, size_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}

  std::vector<PickledTensor> run() {
    Value* root = execute();
    if (root->kind != Value::Kind::Dict)
      fail(label_ + ": pickle holds a " + kind_name(root->kind) + ", not a state dict (a dict of tensors)");
    std::vector<PickledTensor> out;
    std::map<std::string, bool> seen;
    for (size_t k = 0; k + 1 < root->items.size(); k += 2) {
      const Value* key = root->items[k];
      const Value* val = root->items[k + 1];
      if (key->kind != Value::Kind::String)
        fail(label_ + ": state dict key is a " + kind_name(key->kind) + ", not a str");
      if (val->kind != Value::Kind::Tensor)
        fail(label_ + ": state dict entry '" + key->s + "' is a " + kind_name(val->kind) + ", not a tensor");
      if (!seen.emplace(key->s, true).second)
        fail(label_ + ": state dict key '" + key->s + "' appears twice");
      out.push_back(*val->tensor);
      out.back().name = key->s;
    }
    return out;
  }

 private:
  [[noreturn]] void bad(const std::string& msg) const {
    fail(label_ + ": pickle: " + msg + " (at byte " + std::to_string(op_pos_) + ")");
  }

  Value* make(Value::Kind kind) {
    if (arena_.size() >= kMaxObjects) bad("more than " + std::to_string(kMaxObjects) + " objects");
    arena_.push_back(std::make_unique<Value>());
    arena_.back()->kind = kind;
    return arena_.back().get();
  }

  const unsigned char* take(size_t n) {
    if (n > size_ - pos_) bad("truncated: needs " + std::to_string(n) + " more bytes");
    const unsigned char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint8_t u8() { return *take(1); }
  uint32_t u32() { return bytes::le32(take(4)); }

  std::string line() {  // GLOBAL's newline-terminated module and name
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (!nl) bad("unterminated GLOBAL name");
    const size_t n = static_cast<const unsigned char*>(nl) - (data_ + pos_);
    std::string s(reinterpret_cast<const char*>(take(n)), n);
    take(1);
    return s;
  }

  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Value*> pop_to_mark() {
    if (marks_.empty()) bad("no MARK on the stack");
    std::vector<Value*> items(stack_.begin() + marks_.back(), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }

  Value* tuple(std::vector<Value*> items) {
    Value* t = make(Value::Kind::Tuple);
    t->items = std::move(items);
    return t;
  }
  Value* pop_tuple(size_t n) {
    std::vector<Value*> items(n);
    for (size_t k = n; k-- > 0;) items[k] = pop();
    return tuple(std::move(items));
  }

  Value* global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    if (!allowed_global(full))
      bad("global '" + full + "' is not allowed: only tensor rebuilding is (" + kRebuildTensorV2 +
          ", torch.*Storage, " + kOrderedDict + ")");
    Value* g = make(Value::Kind::Global);
    g->s = full;
    return g;
  }

  void add_to_dict(Value* dict, const std::vector<Value*>& kv) {
    if (dict->kind != Value::Kind::Dict) bad("SETITEM(S) on a " + std::string(kind_name(dict->kind)));
    if (kv.size() % 2) bad("SETITEMS with an odd number of items");
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
  }
  void add_to_list(Value* list, const std::vector<Value*>& xs) {
    if (list->kind != Value::Kind::List) bad("APPEND(S) on a " + std::string(kind_name(list->kind)));
    list->items.insert(list->items.end(), xs.begin(), xs.end());
  }

  Value* int_value(int64_t i) {
    Value* v = make(Value::Kind::Int);
    v->i = i;
    return v;
  }
  Value* string_value(size_t n) {
    Value* v = make(Value::Kind::String);
    v->s.assign(reinterpret_cast<const char*>(take(n)), n);
    return v;
  }

  int64_t as_int(const Value* v, const char* what) {
    if (v->kind != Value::Kind::Int && v->kind != Value::Kind::Bool)
      bad(std::string(what) + " must be an int");
    return v->i;
  }
  std::vector<int64_t> int_tuple(const Value* v, const char* what) {
    if (v->kind != Value::Kind::Tuple) bad(std::string(what) + " must be a tuple");
    std::vector<int64_t> out;
    for (const Value* x : v->items) out.push_back(as_int(x, what));
    return out;
  }

  // ('storage', <storage class>, key, location, numel): where a tensor's bytes are.
  Value* persistent_load(const Value* pid) {
    if (pid->kind != Value::Kind::Tuple || pid->items.size() != 5 ||
        pid->items[0]->kind != Value::Kind::String || pid->items[0]->s != "storage")
      bad("persistent id is not ('storage', type, key, location, numel)");
    const Value* type = pid->items[1];
    auto it = type->kind == Value::Kind::Global ? storage_dtypes().find(type->s) : storage_dtypes().end();
    if (it == storage_dtypes().end()) bad("persistent id names no known storage class");
    if (pid->items[2]->kind != Value::Kind::String) bad("storage key must be a str");
    Value* s = make(Value::Kind::Storage);
    s->dtype = it->second;
    s->s = pid->items[2]->s;
    s->i = as_int(pid->items[4], "storage numel");
    if (s->i < 0) bad("negative storage size");
    return s;
  }

  Value* reduce(const Value* callable, const Value* args) {
    if (callable->kind != Value::Kind::Global) bad("REDUCE of a " + std::string(kind_name(callable->kind)));
    if (args->kind != Value::Kind::Tuple) bad("REDUCE arguments must be a tuple");
    const auto& a = args->items;
    if (callable->s == kOrderedDict) {
      if (!a.empty()) bad("OrderedDict(...) with arguments is not supported");
      return make(Value::Kind::Dict);
    }
    if (callable->s == kRebuildTensorV2) {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() < 4) bad("_rebuild_tensor_v2 needs at least 4 arguments");
      if (a[0]->kind != Value::Kind::Storage) bad("_rebuild_tensor_v2's first argument must be a storage");
      auto pt = std::make_unique<PickledTensor>();
      pt->storage_key = a[0]->s;
      pt->dtype = a[0]->dtype;
      pt->storage_numel = a[0]->i;
      pt->storage_offset = as_int(a[1], "storage offset");
      pt->shape = int_tuple(a[2], "tensor size");
      pt->stride = int_tuple(a[3], "tensor stride");
      if (pt->shape.size() != pt->stride.size()) bad("tensor size and stride differ in length");
      Value* t = make(Value::Kind::Tensor);
      t->tensor = std::move(pt);
      return t;
    }
    if (callable->s == kRebuildParameter) {  // (data, requires_grad, backward_hooks): the tensor itself
      if (a.empty() || a[0]->kind != Value::Kind::Tensor)
        bad("_rebuild_parameter's first argument must be a tensor");
      return a[0];
    }
    bad("'" + callable->s + "' cannot be called");
  }

  Value* execute() {
    while (true) {
      op_pos_ = pos_;
      if (pos_ >= size_) bad("truncated: no STOP opcode");
      const uint8_t op = u8();
      switch (op) {
        case 0x80: {  // PROTO
          const uint8_t v = u8();
          if (v > 5) bad("unsupported protocol " + std::to_string(v));
          break;
        }
        case 0x95:
          take(8);
          break;     // FRAME: a length hint only
        case '.': {  // STOP
          Value* result = pop();
          return result;
        }
        case '(':
          marks_.push_back(stack_.size());
          break;  // MARK
        case '0':
          pop();
          break;  // POP
        case '1':
          pop_to_mark();
          break;  // POP_MARK
        case 'N':
          push(make(Value::Kind::None));
          break;
        case 0x88:
        case 0x89: {  // NEWTRUE, NEWFALSE
          Value* b = make(Value::Kind::Bool);
          b->i = op == 0x88;
          push(b);
          break;
        }
        case 'J':
          push(int_value(int32_t(u32())));
          break;  // BININT
        case 'K':
          push(int_value(u8()));
          break;  // BININT1
        case 'M':
          push(int_value(bytes::le16(take(2))));
          break;      // BININT2
        case 0x8a: {  // LONG1: little-endian two's complement
          const uint8_t n = u8();
          if (n > 8) bad("integer of " + std::to_string(n) + " bytes is too large");
          const unsigned char* p = take(n);
          uint64_t u = 0;
          for (int k = n - 1; k >= 0; --k) u = (u << 8) | p[k];
          if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
          push(int_value(int64_t(u)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          const unsigned char* p = take(8);
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | p[k];
          Value* f = make(Value::Kind::Float);
          std::memcpy(&f->f, &u, 8);
          push(f);
          break;
        }
        case 'X':
          push(string_value(u32()));
          break;  // BINUNICODE
        case 0x8c:
          push(string_value(u8()));
          break;      // SHORT_BINUNICODE
        case 0x8d: {  // BINUNICODE8
          const uint64_t n = bytes::le64(take(8));
          if (n > size_) bad("string longer than the pickle");
          push(string_value(size_t(n)));
          break;
        }
        case ')':
          push(tuple({}));
          break;  // EMPTY_TUPLE
        case 't':
          push(tuple(pop_to_mark()));
          break;  // TUPLE
        case 0x85:
          push(pop_tuple(1));
          break;  // TUPLE1
        case 0x86:
          push(pop_tuple(2));
          break;  // TUPLE2
        case 0x87:
          push(pop_tuple(3));
          break;  // TUPLE3
        case ']':
          push(make(Value::Kind::List));
          break;     // EMPTY_LIST
        case 'l': {  // LIST
          Value* l = make(Value::Kind::List);
          l->items = pop_to_mark();
          push(l);
          break;
        }
        case '}':
          push(make(Value::Kind::Dict));
          break;     // EMPTY_DICT
        case 'd': {  // DICT
          auto kv = pop_to_mark();
          Value* d = make(Value::Kind::Dict);
          add_to_dict(d, kv);
          push(d);
          break;
        }
        case 'a': {  // APPEND
          Value* x = pop();
          add_to_list(top(), {x});
          break;
        }
        case 'e': {  // APPENDS
          auto xs = pop_to_mark();
          add_to_list(top(), xs);
          break;
        }
        case 's': {  // SETITEM
          Value* v = pop();
          Value* k = pop();
          add_to_dict(top(), {k, v});
          break;
        }
        case 'u': {  // SETITEMS
          auto kv = pop_to_mark();
          add_to_dict(top(), kv);
          break;
        }
        case 'q':
          memo_[u8()] = top();
          break;  // BINPUT
        case 'r':
          memo_[u32()] = top();
          break;  // LONG_BINPUT
        case 0x94:
          memo_[memo_.size()] = top();
          break;  // MEMOIZE
        case 'h':
        case 'j': {  // BINGET, LONG_BINGET
          const uint32_t idx = op == 'h' ? u8() : u32();
          auto it = memo_.find(idx);
          if (it == memo_.end()) bad("memo entry " + std::to_string(idx) + " is not set");
          push(it->second);
          break;
        }
        case 'c': {  // GLOBAL
          std::string module = line();
          std::string name = line();
          push(global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Value* name = pop();
          Value* module = pop();
          if (name->kind != Value::Kind::String || module->kind != Value::Kind::String)
            bad("STACK_GLOBAL needs two strings");
          push(global(module->s, name->s));
          break;
        }
        case 'R': {  // REDUCE
          Value* args = pop();
          Value* callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 'Q':
          push(persistent_load(pop()));
          break;     // BINPERSID
        case 'b': {  // BUILD: set state; only the no-op cases torch emits
          pop();
          Value* obj = top();
          if (obj->kind != Value::Kind::Dict && obj->kind != Value::Kind::Tensor)
            bad("BUILD on a " + std::string(kind_name(obj->kind)));
          break;
        }
        default: {
          static const char* hex = "0123456789abcdef";
          bad(std::string("unsupported opcode 0x") + hex[op >> 4] + hex[op & 15]);
        }
      }
    }
  }

  const unsigned char* data_;
  size_t size_;
  const std::string& label_;
  size_t pos_ = 0, op_pos_ = 0;
  std::vector<std::unique_ptr<Value>> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

}  // namespace

std::vector<PickledTensor> parse_torch_pickle(const unsigned char* data, size_t size,
                                              const std::string& label) {
  return Unpickler(data, size, label).run();
}

}  // namespace kestrel
