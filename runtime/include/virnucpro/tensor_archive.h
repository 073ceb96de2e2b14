// Reading a torch.save archive (the host's INPUTS.pt) as hostile input.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/ivalue.h>

namespace virnucpro {

// The object torch.save wrote into `bytes` (a zip archive), unpickled by libtorch only after its data.pkl
// passed check_tensor_pickle (tensor_archive.cpp states the rules and why). Throws std::invalid_argument
// (one line, starting with `name`) for anything else: not an archive, unexpected pickle contents, a
// storage larger than its record, or an archive libtorch cannot read.
c10::IValue load_tensor_archive(const std::vector<char>& bytes, const std::string& name);

}  // namespace virnucpro
