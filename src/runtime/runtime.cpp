// placeholder so the library has a translation unit
namespace kestrel {}
