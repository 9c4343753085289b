// Errors as values. Inside the server every fallible operation returns a Status or a
// Result<T>; only the session's single reply point turns an Error into the errno that goes on
// the wire. An Error carries that errno plus a human-readable message for the log line.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace vfu {

struct Error {
  int code = EINVAL;  // errno value reported to the peer
  std::string message;
};

inline Error MakeError(int code, std::string message) { return Error{code, std::move(message)}; }

// Status: success, or an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  static Status Ok() { return Status(); }

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *error_; }
  int code() const { return ok() ? 0 : error_->code; }
  const std::string& message() const {
    static const std::string kEmpty;
    return ok() ? kEmpty : error_->message;
  }

 private:
  std::optional<Error> error_;
};

// Result<T>: a T, or an Error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : value_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(value_); }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { return std::get<Error>(value_); }
  Status status() const { return ok() ? Status() : Status(error()); }

 private:
  std::variant<T, Error> value_;
};

}  // namespace vfu

// Propagates an error from an expression yielding Status.
#define VFU_RETURN_IF_ERROR(expr)                      \
  do {                                                 \
    ::vfu::Status vfu_status_ = (expr);                \
    if (!vfu_status_.ok()) return vfu_status_.error(); \
  } while (0)
