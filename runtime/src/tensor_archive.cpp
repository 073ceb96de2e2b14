// A torch.save archive (the host's INPUTS.pt) read as hostile input: its data.pkl is checked before
// libtorch unpickles it.
//
// libtorch's unpickler trusts its input. With libtorch 2.13 (tests/host_runtime): a data.pkl of ~10^6
// nested lists or 1-tuples kills the process (SIGSEGV: the value's destruction recurses once per level);
// a storage that claims more elements than its record holds gives a tensor over memory it does not own
// (SIGSEGV, or ids read from elsewhere); a LONG_BINPUT grows the memo to any id it names; and a pop
// across a MARK makes it index outside its stack. So data.pkl is first replayed on a model of the pickle
// machine that accepts only what torch.save writes for tensors in tuples (protocol 2):
//  * at most 64 KiB (four tensors pickle in ~330 bytes), values nested at most 16 deep (a tuple of
//    tensors is 5 deep), and no pop across the innermost MARK;
//  * opcodes: MARK, TUPLE(1-3), EMPTY_TUPLE, NONE, NEWTRUE/NEWFALSE, BININT(1/2), LONG1, BINUNICODE,
//    GLOBAL, BINPERSID, REDUCE, BINPUT/LONG_BINPUT, BINGET/LONG_BINGET, STOP -- no lists, dicts or sets;
//  * globals: torch._utils._rebuild_tensor_v2, collections.OrderedDict (a tensor's empty hooks) and the
//    typed storage classes torch.<Type>Storage, each called only as torch.save calls it;
//  * memo ids in the order pickle assigns them, read only once written;
//  * each storage ('storage', torch.<Type>Storage, key, location, numel) fits in its record data/<key>,
//    and each tensor's offset, sizes and strides (all >= 0) stay inside its storage, showing no more
//    elements than it holds: zero or overlapping strides made a 2 KB file a tensor of 2^40 elements
//    over one stored number, which the host's first reduction copied (an 8 TiB allocation, exit 1; a
//    little smaller, all of the machine's memory). torch.save of an ordinary tensor never writes such a
//    view, and the Python reader refuses it too (models/torch_archive.py).
// Before that, the zip container itself is checked (check_zip_layout): libtorch's zip reader inflates a
// record whole when it is read, and reads `version` as it opens the archive, so a deflated record of a
// few MB that claims gigabytes (a zip bomb) took the host to 6.4 GB before any check ran. torch.save
// stores every record uncompressed, so only that is accepted: a bounded central directory, every entry
// stored (method 0, unencrypted) with its compressed size equal to its size, and its data inside the file.
// A storage record is read again for each persistent id naming it (2,000 references to a 1 MB record
// cost 2.1 GB), so the pickle may name storages at most kMaxStorageReferences times: four tensors.
// The `byteorder` record, where there is one, must say `little` (libtorch ignored any other).
// libtorch's warnings while it rebuilds the tensors are dropped: a quantized or complex32 storage drew
// one on stderr, which made the refusal of such a file (by dtype, once loaded) two lines.
#include "virnucpro/tensor_archive.h"
#include "virnucpro/text.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/serialization/import_read.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>

namespace virnucpro {
namespace {

constexpr size_t kMaxPickleBytes = size_t{64} << 10;
constexpr int kMaxDepth = 16;
constexpr size_t kMaxGlobalName = 256;
// torch.save of four tensors writes ~10 records (data.pkl, version, byteorder, ..., one per storage).
constexpr uint64_t kMaxZipEntries = 64;
// One persistent id per tensor: four tensors.
constexpr int kMaxStorageReferences = 4;

uint64_t little_endian(const std::vector<char>& bytes, uint64_t at, int n) {
  uint64_t value = 0;
  for (int i = 0; i < n; ++i) value |= uint64_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
  return value;
}

// The zip container as torch.save writes it (see the top of the file); throws std::invalid_argument.
// Every read is bounds-checked against the file, and the walk is bounded by kMaxZipEntries.
void check_zip_layout(const std::vector<char>& bytes) {
  const uint64_t size = bytes.size();
  const auto refuse = [](const std::string& why) {
    throw std::invalid_argument("is not a torch.save archive this host can read: " + why);
  };
  const auto at = [&](uint64_t offset, uint64_t n, const char* what) {
    if (offset > size || n > size - offset) refuse(std::string(what) + " lies outside the file");
  };
  const auto signature = [&](uint64_t offset, uint32_t want) { return little_endian(bytes, offset, 4) == want; };
  // End of central directory: the last signature at least 22 bytes before the end (where libtorch's
  // miniz looks), whose comment must then end the file.
  constexpr uint64_t kEocd = 22;
  if (size < kEocd) refuse("too short");
  uint64_t eocd = size - kEocd;
  const uint64_t lowest = size - std::min<uint64_t>(size, kEocd + 0xffff);
  while (!signature(eocd, 0x06054b50)) {
    if (eocd == lowest) refuse("no end of central directory");
    --eocd;
  }
  if (eocd + kEocd + little_endian(bytes, eocd + 20, 2) != size) refuse("bytes after its end record");
  uint64_t entries = little_endian(bytes, eocd + 10, 2), directory_size = little_endian(bytes, eocd + 12, 4),
           directory = little_endian(bytes, eocd + 16, 4), directory_end = eocd;
  // Zip64 (torch.save always writes it): a locator just before, naming the zip64 end record.
  if (eocd >= 20 && signature(eocd - 20, 0x07064b50)) {
    const uint64_t record = little_endian(bytes, eocd - 20 + 8, 8);
    at(record, 56, "the zip64 end of central directory");
    if (!signature(record, 0x06064b50) || record + 56 > eocd - 20) refuse("a bad zip64 end of central directory");
    // the zip64 values, which must agree with the classic record's unless it says "see zip64"
    const auto wide = [&](uint64_t classic, uint64_t sentinel, uint64_t at_offset) {
      const uint64_t value = little_endian(bytes, record + at_offset, 8);
      if (classic != sentinel && classic != value) refuse("end records that disagree");
      return value;
    };
    entries = wide(entries, 0xffff, 32);
    directory_size = wide(directory_size, 0xffffffff, 40);
    directory = wide(directory, 0xffffffff, 48);
    directory_end = record;
  }
  if (entries > kMaxZipEntries) {
    refuse(std::to_string(entries) + " entries (torch.save writes about ten; at most " +
           std::to_string(kMaxZipEntries) + " are read)");
  }
  at(directory, directory_size, "the central directory");
  if (directory + directory_size > directory_end) refuse("the central directory overlaps its end record");
  uint64_t offset = directory;
  for (uint64_t i = 0; i < entries; ++i) {
    at(offset, 46, "an entry of the central directory");
    if (offset + 46 > directory + directory_size || !signature(offset, 0x02014b50)) {
      refuse("a damaged central directory");
    }
    const uint64_t flags = little_endian(bytes, offset + 8, 2), method = little_endian(bytes, offset + 10, 2);
    uint64_t compressed = little_endian(bytes, offset + 20, 4), stored = little_endian(bytes, offset + 24, 4);
    const uint64_t name_size = little_endian(bytes, offset + 28, 2), extra_size = little_endian(bytes, offset + 30, 2),
                   comment_size = little_endian(bytes, offset + 32, 2);
    uint64_t local = little_endian(bytes, offset + 42, 4);
    const uint64_t extra = offset + 46 + name_size, next = extra + extra_size + comment_size;
    if (next > directory + directory_size) refuse("a damaged central directory");
    const std::string name = printable(std::string(bytes.data() + offset + 46, name_size));
    // zip64 sizes and offset, in this order, for each field the entry marks 0xffffffff
    // one zip64 field: libtorch's reader takes the first, so a second could tell this check other sizes
    bool zip64_seen = false;
    for (uint64_t field = extra; field + 4 <= extra + extra_size;) {
      const uint64_t id = little_endian(bytes, field, 2), length = little_endian(bytes, field + 2, 2);
      if (field + 4 + length > extra + extra_size) refuse("a damaged extra field in entry " + name);
      if (id == 1) {
        if (zip64_seen) refuse("two zip64 fields in entry " + name);
        zip64_seen = true;
        uint64_t value = field + 4;
        for (uint64_t* wide : {&stored, &compressed, &local}) {
          if (*wide != 0xffffffff) continue;
          if (value + 8 > field + 4 + length) refuse("a damaged zip64 field in entry " + name);
          *wide = little_endian(bytes, value, 8);
          value += 8;
        }
      }
      field += 4 + length;
    }
    if (method != 0 || (flags & 1) != 0) {
      refuse("entry " + name + " is " + (method != 0 ? "compressed" : "encrypted") +
             " (torch.save stores records as they are)");
    }
    if (compressed != stored) refuse("entry " + name + " claims a size other than its stored bytes");
    at(local, 30, "a local header");
    if (!signature(local, 0x04034b50) || little_endian(bytes, local + 8, 2) != 0) {
      refuse("entry " + name + " has a bad or compressed local header");
    }
    const uint64_t data = local + 30 + little_endian(bytes, local + 26, 2) + little_endian(bytes, local + 28, 2);
    at(data, stored, ("the data of entry " + name).c_str());
    if (data + stored > directory) refuse("the data of entry " + name + " runs into the central directory");
    offset = next;
  }
}

// The archive's bytes for libtorch's zip reader, without the copy torch::pickle_load makes of them.
class BytesReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReader(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(n, bytes_.size() - pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::vector<char>& bytes_;
};

// Element size of the storage class torch.save names ("torch.LongStorage"), 0 for any other name: the
// scalar types libtorch's unpickler resolves, through the same list.
size_t storage_element_size(const std::string& global) {
#define VIRNUCPRO_STORAGE(_, Name) \
  if (global == "torch." #Name "Storage") return c10::elementSize(c10::ScalarType::Name);
  AT_FORALL_SCALAR_TYPES_WITH_COMPLEX_AND_QINTS(VIRNUCPRO_STORAGE)
#undef VIRNUCPRO_STORAGE
  return 0;
}

// What the check knows of a value on the pickle machine's stack. Every value is immutable once built
// (no list or dict is accepted), so the memo can share them and a depth never changes.
struct Value {
  enum class Kind { kScalar, kInt, kText, kGlobal, kTuple, kStorage, kTensor };
  Kind kind = Kind::kScalar;
  int depth = 0;                                  // 0 for a scalar, else 1 + the deepest part
  int64_t number = 0;                             // kInt: the value; kStorage: its element count
  std::string text;                               // kText: the string; kGlobal: "module.name"
  std::vector<std::shared_ptr<const Value>> items;  // kTuple
};
using Ref = std::shared_ptr<const Value>;

class PickleCheck {
 public:
  // `archive_bytes`: the archive's size, which no record of it can exceed unless it is compressed (torch.save
  // stores records uncompressed; a compressed one could claim any size).
  PickleCheck(const char* data, size_t size, caffe2::serialize::PyTorchStreamReader& archive, size_t archive_bytes)
      : data_(data), size_(size), archive_bytes_(archive_bytes), archive_(archive) {}

  // Replays the whole pickle; throws std::invalid_argument naming the first thing refused.
  void run() {
    if (take(1) != 0x80 || take(1) != 2) fail("is not a protocol-2 pickle (what torch.save writes)");
    for (;;) {
      op_at_ = pos_;
      const auto op = static_cast<unsigned>(take(1));
      switch (op) {
        case '(': marks_.push_back(stack_.size()); break;
        case ')': tuple({}); break;
        case 't': tuple(pop_to_mark()); break;
        case 0x85: case 0x86: case 0x87: tuple(pop_n(op - 0x84)); break;  // TUPLE1..3
        case 'N': case 0x88: case 0x89: push(Value{}); break;              // None, True, False
        case 'K': integer(static_cast<int64_t>(take(1))); break;
        case 'M': integer(static_cast<int64_t>(take(2))); break;
        case 'J': integer(static_cast<int32_t>(take(4))); break;
        case 0x8a: long1(); break;
        case 'X': text(take_bytes(take(4))); break;
        case 'c': global(); break;
        case 'Q': persistent_id(); break;
        case 'R': reduce(); break;
        case 'q': put(take(1)); break;
        case 'r': put(take(4)); break;
        case 'h': get(take(1)); break;
        case 'j': get(take(4)); break;
        case '.':
          if (stack_.size() != 1 || !marks_.empty()) fail("does not end with exactly one object");
          return;
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          fail(std::string("uses pickle opcode ") + hex + ", which torch.save does not write for tensors");
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("data.pkl " + why + " (byte " + std::to_string(op_at_) + ")");
  }

  // The next n bytes as a little-endian unsigned number (n <= 8).
  uint64_t take(size_t n) {
    if (n > size_ - pos_) fail("ends in the middle of an instruction");
    uint64_t value = 0;
    for (size_t i = 0; i < n; ++i) value |= uint64_t{static_cast<unsigned char>(data_[pos_ + i])} << (8 * i);
    pos_ += n;
    return value;
  }
  std::string take_bytes(uint64_t n) {
    if (n > size_ - pos_) fail("ends in the middle of a string");
    std::string out(data_ + pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return out;
  }
  std::string take_line() {
    const auto end = std::find(data_ + pos_, data_ + std::min(size_, pos_ + kMaxGlobalName), '\n');
    if (end == data_ + std::min(size_, pos_ + kMaxGlobalName)) fail("names a global without an end");
    std::string out(data_ + pos_, end);
    pos_ = static_cast<size_t>(end - data_) + 1;
    return out;
  }

  // The stack above the innermost MARK is all an instruction may take.
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Ref value) {
    if (value->depth > kMaxDepth) fail("nests values deeper than " + std::to_string(kMaxDepth) + " levels");
    stack_.push_back(std::move(value));
  }
  void push(Value value) { push(std::make_shared<const Value>(std::move(value))); }
  Ref pop() {
    if (stack_.size() <= fence()) fail("takes more values than it pushed");
    auto top = std::move(stack_.back());
    stack_.pop_back();
    return top;
  }
  std::vector<Ref> pop_n(size_t n) {
    std::vector<Ref> items(n);
    for (size_t i = n; i-- > 0;) items[i] = pop();
    return items;
  }
  std::vector<Ref> pop_to_mark() {
    if (marks_.empty()) fail("closes a tuple it never opened");
    const size_t count = stack_.size() - marks_.back();
    auto items = pop_n(count);
    marks_.pop_back();
    return items;
  }

  void tuple(std::vector<Ref> items) {
    Value value{Value::Kind::kTuple, 1};
    for (const auto& item : items) value.depth = std::max(value.depth, item->depth + 1);
    value.items = std::move(items);
    push(std::move(value));
  }
  void integer(int64_t number) { push(Value{Value::Kind::kInt, 0, number}); }
  void long1() {
    const auto n = take(1);
    if (n > 8) fail("holds an integer wider than 64 bits");
    auto number = take(n);
    if (n > 0 && n < 8 && (number >> (8 * n - 1)) & 1) number |= ~uint64_t{0} << (8 * n);  // sign-extend
    integer(static_cast<int64_t>(number));
  }
  void text(std::string bytes) { push(Value{Value::Kind::kText, 0, 0, std::move(bytes)}); }

  void global() {
    auto name = take_line();
    name += "." + take_line();
    const bool known = name == "torch._utils._rebuild_tensor_v2" || name == "collections.OrderedDict" ||
                       storage_element_size(name) > 0;
    if (!known) fail("refers to " + printable(name) + ", which a file of tensors has no use for");
    push(Value{Value::Kind::kGlobal, 0, 0, std::move(name)});
  }

  // ('storage', torch.<Type>Storage, key, location, numel): libtorch makes a storage of numel elements
  // over the bytes of record data/<key>, trusting that they are that many.
  void persistent_id() {
    if (++storage_references_ > kMaxStorageReferences) {
      fail("names a storage more than " + std::to_string(kMaxStorageReferences) +
           " times (one per tensor; libtorch reads the record again for each)");
    }
    const auto id = pop();
    const auto& p = id->items;
    const bool shaped = id->kind == Value::Kind::kTuple && p.size() == 5 && p[0]->kind == Value::Kind::kText &&
                        p[0]->text == "storage" && p[1]->kind == Value::Kind::kGlobal &&
                        p[2]->kind == Value::Kind::kText && p[3]->kind == Value::Kind::kText &&
                        p[4]->kind == Value::Kind::kInt && p[4]->number >= 0;
    const size_t element = shaped ? storage_element_size(p[1]->text) : 0;
    if (element == 0) fail("has a persistent id that is not a storage torch.save writes");
    const auto numel = static_cast<uint64_t>(p[4]->number);
    if (numel > 0) {
      const std::string record = "data/" + p[2]->text;
      if (!archive_.hasRecord(record)) fail("names storage '" + printable(p[2]->text) + "', which has no record");
      const uint64_t bytes = archive_.getRecordSize(record);
      if (bytes > archive_bytes_) fail("has a storage record larger than the archive itself");
      if (numel > bytes / element) {
        fail("says storage '" + printable(p[2]->text) + "' holds " + std::to_string(numel) +
             " elements, more than its record's " + std::to_string(bytes) + " bytes");
      }
    }
    push(Value{Value::Kind::kStorage, id->depth + 1, p[4]->number});
  }
  void reduce() {
    const auto args = pop();
    const auto callable = pop();
    if (callable->kind != Value::Kind::kGlobal || args->kind != Value::Kind::kTuple) {
      fail("calls something other than a known global with a tuple");
    }
    if (callable->text == "collections.OrderedDict" && args->items.empty()) {
      push(Value{});  // a tensor's (empty) backward hooks; libtorch replaces them with None
    } else if (callable->text == "torch._utils._rebuild_tensor_v2") {
      check_tensor(*args);
      push(Value{Value::Kind::kTensor, args->depth + 1});
    } else {
      fail("calls " + printable(callable->text) + " as torch.save never does");
    }
  }

  // _rebuild_tensor_v2(storage, offset, sizes, strides, ...): every element the view reaches must lie
  // inside the storage (offset + sum((size - 1) * stride) < numel), with nothing negative, and the view
  // must show no more elements than the storage holds (prod(size) <= numel).
  void check_tensor(const Value& args) {
    const auto& a = args.items;
    const auto ints = [](const Ref& v) {
      return v->kind == Value::Kind::kTuple && std::all_of(v->items.begin(), v->items.end(), [](const Ref& i) {
               return i->kind == Value::Kind::kInt && i->number >= 0;
             });
    };
    if (a.size() < 4 || a[0]->kind != Value::Kind::kStorage || a[1]->kind != Value::Kind::kInt ||
        a[1]->number < 0 || !ints(a[2]) || !ints(a[3]) || a[2]->items.size() != a[3]->items.size()) {
      fail("rebuilds a tensor from something other than a storage, an offset, sizes and strides");
    }
    int64_t last = a[1]->number, elements = 1;
    bool empty = false, overflow = false, repeats = false;
    for (size_t i = 0; i < a[2]->items.size(); ++i) {
      const int64_t size = a[2]->items[i]->number, stride = a[3]->items[i]->number;
      int64_t reach = 0;
      empty = empty || size == 0;
      overflow = overflow || (size > 0 && (__builtin_mul_overflow(size - 1, stride, &reach) ||
                                           __builtin_add_overflow(last, reach, &last)));
      repeats = repeats || __builtin_mul_overflow(elements, size, &elements);
    }
    if (!empty && (overflow || last >= a[0]->number)) fail("has a tensor that reaches past its storage");
    if (!empty && (repeats || elements > a[0]->number)) {
      fail("has a tensor of more elements than its storage holds (zero or overlapping strides)");
    }
  }

  void put(uint64_t id) {
    if (stack_.size() <= fence()) fail("memoizes a value it has not pushed");
    if (id > memo_.size()) fail("memoizes out of order (id " + std::to_string(id) + ")");
    if (id == memo_.size()) {
      memo_.push_back(stack_.back());
    } else {
      memo_[id] = stack_.back();
    }
  }
  void get(uint64_t id) {
    if (id >= memo_.size()) fail("reads a memo entry it never wrote (id " + std::to_string(id) + ")");
    push(memo_[id]);
  }

  const char* data_;
  size_t size_, archive_bytes_, pos_ = 0, op_at_ = 0;
  int storage_references_ = 0;
  caffe2::serialize::PyTorchStreamReader& archive_;
  std::vector<Ref> stack_, memo_;
  std::vector<size_t> marks_;
};

// Drops libtorch's warnings (see the top of the file) while it is in place.
class SilentWarnings final : public c10::WarningHandler {
 public:
  void process(const c10::Warning& /*warning*/) override {}
};

// data.pkl of the archive, checked (throws std::invalid_argument).
void check_tensor_pickle(caffe2::serialize::PyTorchStreamReader& archive, size_t archive_size) {
  const size_t size = archive.getRecordSize("data.pkl");
  if (size > kMaxPickleBytes) {
    throw std::invalid_argument("data.pkl is " + std::to_string(size) + " bytes; a tuple of tensors pickles in " +
                                "far fewer (at most " + std::to_string(kMaxPickleBytes) + " are read)");
  }
  if (archive.hasRecord("byteorder")) {  // older torch.save wrote none: little-endian
    const size_t order_size = archive.getRecordSize("byteorder");
    const auto [order, order_read] = archive.getRecord("byteorder");
    const std::string text(static_cast<const char*>(order.get()), std::min<size_t>(order_read, 16));
    if (order_size != 6 || text != "little") {
      throw std::invalid_argument("byteorder record says '" + printable(text) +
                                  "'; this host reads only little-endian archives");
    }
  }
  const auto [pickle, read] = archive.getRecord("data.pkl");
  PickleCheck(static_cast<const char*>(pickle.get()), read, archive, archive_size).run();
}

}  // namespace

c10::IValue load_tensor_archive(const std::vector<char>& bytes, const std::string& name) {
  SilentWarnings silent;
  const c10::WarningUtils::WarningHandlerGuard quiet(&silent);
  try {
    check_zip_layout(bytes);
    caffe2::serialize::PyTorchStreamReader archive(std::make_shared<BytesReader>(bytes));
    check_tensor_pickle(archive, bytes.size());
    return torch::jit::readArchiveAndTensors("data", "", "", std::nullopt, std::nullopt, std::nullopt, archive);
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument(name + ": " + error.what() +
                                "; write it with torch.save((dna_ids, dna_mask, protein_ids, protein_mask))");
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const c10::Error& error) {
    throw std::invalid_argument(name + " is not a torch.save archive this host can read: " +
                                first_line(error.what_without_backtrace()));
  } catch (const std::exception& error) {
    throw std::invalid_argument(name + " cannot be read: " + first_line(error.what()));
  }
}

}  // namespace virnucpro
