#include "server/service/handoff.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <span>

#include "server/common/filesystem.h"
#include "server/common/log.h"
#include "server/state/record.h"

namespace vfu::service {
namespace {

using Clock = std::chrono::steady_clock;

// Blocking helpers over a socket with a deadline for each call.
Status Configure(UnixConnection& c, std::chrono::milliseconds timeout) {
  VFU_RETURN_IF_ERROR(c.SetNonBlocking(false));
  return c.SetReceiveTimeout(timeout);
}

Status SendAll(UnixConnection& c, std::span<const uint8_t> bytes, std::span<const int> fds = {}) {
  size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < bytes.size()) {
    iovec iov{const_cast<uint8_t*>(bytes.data() + sent), bytes.size() - sent};
    auto n = c.Send({&iov, 1}, fds_sent ? std::span<const int>{} : fds);
    if (!n) return n.error();
    fds_sent = true;
    sent += *n;
  }
  return Status::Ok();
}

// Receives exactly out.size() bytes; fds that come with them go to *fds, or are an error when
// fds is null (none belong there).
Status ReceiveExact(UnixConnection& c, std::span<uint8_t> out, std::vector<UniqueFd>* fds) {
  size_t have = 0;
  std::vector<UniqueFd> unexpected;
  while (have < out.size()) {
    auto got = c.Receive(out.subspan(have), fds != nullptr ? fds : &unexpected);
    if (!unexpected.empty()) return MakeError(EPROTO, "the peer sent fds where none belong");
    if (!got) {
      return MakeError(got.error().code, got.error().code == EAGAIN
                                             ? std::string("the peer did not answer in time")
                                             : got.error().message);
    }
    if (got->bytes == 0) return MakeError(ECONNRESET, "the peer closed the connection");
    if (got->fds_truncated) return MakeError(EPROTO, "the peer sent more fds than expected");
    have += got->bytes;
  }
  return Status::Ok();
}

void PutU32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutU64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t GetLe(const uint8_t* p, int width) {
  uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// A status word and a message.
Status SendStatus(UnixConnection& c, int code, const std::string& message) {
  std::vector<uint8_t> b;
  PutU32(b, static_cast<uint32_t>(code));
  PutU32(b, static_cast<uint32_t>(message.size()));
  b.insert(b.end(), message.begin(), message.end());
  return SendAll(c, b);
}

Result<std::string> ReceiveMessage(UnixConnection& c) {
  uint8_t len[4];
  VFU_RETURN_IF_ERROR(ReceiveExact(c, len, nullptr));
  uint32_t n = static_cast<uint32_t>(GetLe(len, 4));
  if (n > 64 * 1024) return MakeError(EPROTO, "a message of " + std::to_string(n) + " bytes");
  std::string text(n, '\0');
  VFU_RETURN_IF_ERROR(
      ReceiveExact(c, {reinterpret_cast<uint8_t*>(text.data()), text.size()}, nullptr));
  return text;
}

// The old server's half, once a successor has connected.
Status HandOver(UnixConnection& c, DeviceManager* manager, const HandoffTimeouts& timeouts,
                bool* handed_over) {
  VFU_RETURN_IF_ERROR(Configure(c, timeouts.peer));
  uint8_t hello[6];
  VFU_RETURN_IF_ERROR(ReceiveExact(c, hello, nullptr));
  auto magic = static_cast<uint32_t>(GetLe(hello, 4));
  auto format = static_cast<uint16_t>(GetLe(hello + 4, 2));
  if (magic != kHandoffMagic) return MakeError(EPROTO, "not a vfio-user-server successor");
  if (format != state::kRecordFormatVersion) {
    std::string why = "this server writes state format " +
                      std::to_string(state::kRecordFormatVersion) + ", the successor reads " +
                      std::to_string(format);
    (void)SendStatus(c, EPROTONOSUPPORT, why);
    return MakeError(EPROTONOSUPPORT, why);
  }
  state::Writer w;
  auto t0 = Clock::now();
  if (Status s = manager->SuspendForHandoff(&w, timeouts.quiesce); !s.ok()) {
    (void)SendStatus(c, s.code(), s.message());
    return s;
  }
  // From here on the devices are suspended: every way out resumes them unless the successor
  // confirmed.
  bool succeeded = false;
  Status result = [&]() -> Status {
    std::vector<uint8_t> head;
    PutU32(head, 0);
    PutU64(head, w.bytes().size());
    PutU32(head, static_cast<uint32_t>(w.fds().size()));
    VFU_RETURN_IF_ERROR(SendAll(c, head));
    VFU_RETURN_IF_ERROR(SendAll(c, w.bytes()));
    for (size_t i = 0; i < w.fds().size(); i += kFdsPerMessage) {
      size_t n = std::min(kFdsPerMessage, w.fds().size() - i);
      uint8_t one = 0;
      VFU_RETURN_IF_ERROR(SendAll(c, {&one, 1}, std::span<const int>(w.fds()).subspan(i, n)));
    }
    uint8_t answer[4];
    VFU_RETURN_IF_ERROR(ReceiveExact(c, answer, nullptr));
    auto code = static_cast<int>(GetLe(answer, 4));
    auto why = ReceiveMessage(c);
    if (code != 0) {
      return MakeError(code, "the successor refused: " + (why ? *why : std::string("?")));
    }
    succeeded = true;
    return Status::Ok();
  }();
  manager->FinishHandoff(succeeded);
  auto pause = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  if (succeeded) {
    Log::Write(LogLevel::kInfo, "handoff complete: the successor serves the devices",
               {{"record_bytes", std::to_string(w.bytes().size())},
                {"fds", std::to_string(w.fds().size())},
                {"suspended_ms", std::to_string(pause.count())}});
  }
  *handed_over = succeeded;
  return result;
}

}  // namespace

Result<HandoffListener> HandoffListener::Listen(const std::string& path) {
  auto listener = UnixListener::Bind(path);
  if (!listener) return listener.error();
  // Only this server's user may hand its devices over (the socket carries guest memory fds).
  VFU_RETURN_IF_ERROR(SetSocketOwnerNoFollow(path, ::geteuid(), ::getegid(), 0600));
  HandoffListener h;
  h.listener_ = std::move(*listener);
  return h;
}

bool HandoffListener::ServePending(DeviceManager* manager, const HandoffTimeouts& timeouts) {
  while (true) {
    auto conn = listener_.Accept();
    if (!conn) return false;  // none waiting (EAGAIN) or an accept error
    ucred peer{};
    socklen_t len = sizeof(peer);
    std::string who = "?";
    if (::getsockopt(conn->fd(), SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0) {
      who = "pid " + std::to_string(peer.pid);
    }
    Log::Write(LogLevel::kInfo, "handoff: a successor asks for the devices", {{"successor", who}});
    bool handed_over = false;
    Status s = HandOver(*conn, manager, timeouts, &handed_over);
    if (handed_over) {
      successor_ = std::move(*conn);
      return true;
    }
    Log::Write(LogLevel::kWarn, "handoff failed; serving on",
               {{"successor", who}, {"error", s.message()}});
  }
}

Result<HandoffClient> HandoffClient::TakeOver(const std::string& path, DeviceManager* manager,
                                              const std::vector<DevicePlan>& plans,
                                              const HandoffTimeouts& timeouts,
                                              ApplyReport* report) {
  auto conn = UnixConnection::Connect(path);
  if (!conn) {
    return MakeError(conn.error().code, "cannot reach the running server's handoff socket " + path +
                                            ": " + conn.error().message);
  }
  VFU_RETURN_IF_ERROR(Configure(*conn, timeouts.peer));
  const auto asked = Clock::now();  // the running server stops serving when it reads this
  std::vector<uint8_t> hello;
  PutU32(hello, kHandoffMagic);
  hello.push_back(static_cast<uint8_t>(state::kRecordFormatVersion));
  hello.push_back(static_cast<uint8_t>(state::kRecordFormatVersion >> 8));
  VFU_RETURN_IF_ERROR(SendAll(*conn, hello));
  uint8_t status[4];
  VFU_RETURN_IF_ERROR(ReceiveExact(*conn, status, nullptr));
  if (int code = static_cast<int>(GetLe(status, 4)); code != 0) {
    auto why = ReceiveMessage(*conn);
    return MakeError(code, "the running server refused: " + (why ? *why : std::string("?")));
  }
  uint8_t sizes[12];
  VFU_RETURN_IF_ERROR(ReceiveExact(*conn, sizes, nullptr));
  uint64_t bytes = GetLe(sizes, 8);
  auto fd_count = static_cast<uint32_t>(GetLe(sizes + 8, 4));
  if (bytes > (64u << 20) || fd_count > 65536) {
    return MakeError(EPROTO, "an implausible state record (" + std::to_string(bytes) + " bytes, " +
                                 std::to_string(fd_count) + " fds)");
  }
  std::vector<uint8_t> record(bytes);
  VFU_RETURN_IF_ERROR(ReceiveExact(*conn, record, nullptr));
  std::vector<UniqueFd> fds;
  while (fds.size() < fd_count) {
    uint8_t one;
    size_t before = fds.size();
    VFU_RETURN_IF_ERROR(ReceiveExact(*conn, {&one, 1}, &fds));
    if (fds.size() == before) return MakeError(EPROTO, "an fd batch without fds");
  }
  if (fds.size() != fd_count) return MakeError(EPROTO, "more fds than announced");
  std::vector<int> raw;
  raw.reserve(fds.size());
  for (const UniqueFd& fd : fds) raw.push_back(fd.get());
  auto reader = state::Reader::Open(record, raw);
  Result<ApplyReport> applied =
      reader ? manager->ApplyFromHandoff(plans, *reader) : Result<ApplyReport>(reader.error());
  if (!applied) {
    (void)SendStatus(*conn, applied.error().code, applied.error().message);
    return applied.error();
  }
  // Serving since ApplyFromHandoff: the pause the clients saw ends here.
  auto pause = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - asked);
  manager->RecordHandoff(pause);
  Log::Write(LogLevel::kInfo, "handoff: serving the devices",
             {{"devices", std::to_string(applied->added.size())},
              {"fds", std::to_string(fd_count)},
              {"record_bytes", std::to_string(bytes)},
              {"pause_us", std::to_string(pause.count() / 1000)},
              {"handoffs", std::to_string(manager->handoff_stats().handoffs)}});
  VFU_RETURN_IF_ERROR(SendStatus(*conn, 0, ""));
  if (report != nullptr) *report = std::move(*applied);
  HandoffClient client;
  client.connection_ = std::move(*conn);
  return client;
}

bool HandoffClient::WaitForPredecessorExit(std::chrono::milliseconds timeout) {
  pollfd p{connection_.fd(), POLLIN | POLLRDHUP, 0};
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 1)));
    if (n > 0) {
      uint8_t byte;
      ssize_t got = ::recv(connection_.fd(), &byte, 1, MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno != EAGAIN)) return true;
    }
  }
  return false;
}

}  // namespace vfu::service
