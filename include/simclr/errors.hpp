#pragma once
// The exception hierarchy of the library. Every error a caller can see derives from simclr::Error,
// named for what a Python user of TensorFlow Similarity would see for the same mistake.

#include <stdexcept>
#include <string>

namespace simclr {

// Root of every exception the library throws (a std::runtime_error).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A bad value: shapes that do not match, NaN/Inf in an embedding, an invalid reduction or
// temperature, the distribution rule. Python: ValueError.
class ValueError : public Error {
 public:
  explicit ValueError(const std::string& what) : Error(what) {}
};

// A value of the wrong kind: an unknown config key, a config value of the wrong JSON type, a wrong
// dtype. Python: TypeError.
class TypeError : public Error {
 public:
  explicit TypeError(const std::string& what) : Error(what) {}
};

// A failure of the communication layer (MPI, NCCL) or a collective that timed out.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

// A failure of the device: a CUDA runtime or cuBLAS call, a kernel launch, or device memory that
// could not be allocated. The message names the call. Python: RuntimeError.
class DeviceError : public Error {
 public:
  explicit DeviceError(const std::string& what) : Error(what) {}
};

// What this build or this call lacks: a dtype only the other path takes, device memory on a host
// call, a framework tensor kind the library cannot read. The C API's SIMCLR_UNSUPPORTED; Python:
// NotImplementedError.
class UnsupportedError : public Error {
 public:
  explicit UnsupportedError(const std::string& what) : Error(what) {}
};

}  // namespace simclr
