#include "server/session/endpoint.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "server/common/filesystem.h"

namespace vfu {

DeviceEndpoint::DeviceEndpoint(std::string id, std::string socket_path, VfioDevice* device,
                               Reactor* reactor, SessionOptions options)
    : id_(std::move(id)),
      socket_path_(std::move(socket_path)),
      device_(device),
      reactor_(reactor),
      options_(options),
      log_({{"device", id_}}) {}

DeviceEndpoint::~DeviceEndpoint() { Stop(); }

Status DeviceEndpoint::Start() {
  auto listener = UnixListener::Bind(socket_path_);
  if (!listener) return listener.error();
  listener_ = std::move(*listener);
  if (owner_) {
    if (Status st = SetSocketOwnerNoFollow(socket_path_, owner_->uid, owner_->gid, owner_->mode);
        !st.ok()) {
      listener_ = UnixListener();
      return st;
    }
  }
  if (Status s = Watch(); !s.ok()) {
    listener_ = UnixListener();
    return s;
  }
  log_.Info("listening", {{"socket", socket_path_}});
  return Status::Ok();
}

void DeviceEndpoint::Stop() {
  if (suspended_) {
    // A handoff that neither completed nor was resumed: nothing is watched any more.
    suspended_ = false;
    session_.reset();
    client_description_.clear();
    listener_ = UnixListener();  // closes and unlinks
    return;
  }
  EndSession();
  if (listener_.fd() >= 0) {
    Unwatch();
    listener_ = UnixListener();  // closes and unlinks
  }
}

void DeviceEndpoint::OnAccept() {
  while (true) {
    auto conn = listener_.Accept();
    if (!conn) {
      if (conn.error().code != EAGAIN)
        log_.Warn("accept failed", {{"error", conn.error().message}});
      return;
    }
    if (session_) {
      ++stats_.rejected_clients;
      log_.Warn("rejecting a second client: the device already has one",
                {{"client", std::to_string(client_counter_)}});
      continue;  // conn closes here
    }
    ++client_counter_;
    ++stats_.connects;
    int fd = conn->fd();
    ucred peer{};
    socklen_t peer_len = sizeof(peer);
    client_description_ = "client " + std::to_string(client_counter_);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) == 0) {
      client_description_ +=
          " (pid " + std::to_string(peer.pid) + ", uid " + std::to_string(peer.uid) + ")";
    }
    LogContext session_log(log_.fields());
    session_log.Set("client", std::to_string(client_counter_));
    session_log.Info("client connected", {{"peer", client_description_}});
    session_ = std::make_unique<Session>(std::move(*conn), device_, options_, session_log);
    session_events_ = EPOLLIN | EPOLLRDHUP;
    Status s =
        reactor_->Add(fd, session_events_, [this](uint32_t events) { OnSessionEvent(events); });
    if (!s.ok()) {
      log_.Error("cannot watch the client socket", {{"error", s.message()}});
      session_.reset();
    }
  }
}

void DeviceEndpoint::OnSessionEvent(uint32_t events) {
  if (!session_) return;
  Session::State state = Session::State::kOpen;
  if (events & EPOLLOUT) state = session_->OnWritable();
  if (state == Session::State::kOpen &&
      ((events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) || session_->HasBufferedInput())) {
    state = session_->OnReadable();
  }
  if (state == Session::State::kClosed) {
    EndSession();
    return;
  }
  UpdateSessionInterest();
  // Requests already read from the socket will not make it readable again: run the session
  // for them soon (after other work of this round), unless replies must drain first (then the
  // EPOLLOUT event runs it).
  if (session_->HasBufferedInput() && !session_->ReadPaused() && !rerun_posted_) {
    rerun_posted_ = true;
    reactor_->Post([weak = std::weak_ptr<DeviceEndpoint*>(self_)] {
      auto self = weak.lock();
      if (!self) return;
      (*self)->rerun_posted_ = false;
      (*self)->OnSessionEvent(0);
    });
  }
}

void DeviceEndpoint::UpdateSessionInterest() {
  // Write interest while replies are queued; no read interest while too many are queued. That
  // includes EPOLLRDHUP: a client that half-closed its side would otherwise report it on every
  // (level-triggered) wait while the paused session reads nothing, and the thread would spin.
  // EPOLLHUP and EPOLLERR are always reported.
  uint32_t events = (session_->WantsWrite() ? EPOLLOUT : 0u) |
                    (session_->ReadPaused() ? 0u : EPOLLIN | EPOLLRDHUP);
  if (events == session_events_) return;
  (void)reactor_->Modify(session_->fd(), events);
  session_events_ = events;
}

void DeviceEndpoint::EndSession() {
  if (!session_) return;
  reactor_->Remove(session_->fd());
  const SessionStats& s = session_->stats();
  session_->log().Info("session ended; client resources released",
                       {{"messages", std::to_string(s.messages)},
                        {"errors", std::to_string(s.errors)},
                        {"dma_maps_released", std::to_string(session_->dma_maps().size())},
                        {"irq_fds_released", std::to_string(session_->irqs().eventfd_count())}});
  stats_.protocol_errors += s.errors;
  session_.reset();
  client_description_.clear();
  ++stats_.disconnects;
}

// --- handing the endpoint to another process -----------------------------------------------

inline constexpr uint16_t kEndpointStateVersion = 1;

void DeviceEndpoint::Unwatch() {
  if (Poller* poller = device_->poller()) reactor_->RemovePoller(poller);
  if (int fd = device_->wake_fd(); fd >= 0) reactor_->Remove(fd);
  if (listener_.fd() >= 0) reactor_->Remove(listener_.fd());
  if (session_) reactor_->Remove(session_->fd());
}

Status DeviceEndpoint::Watch() {
  VFU_RETURN_IF_ERROR(reactor_->Add(listener_.fd(), EPOLLIN, [this](uint32_t) { OnAccept(); }));
  if (Poller* poller = device_->poller()) reactor_->AddPoller(poller, id_);
  if (int fd = device_->wake_fd(); fd >= 0) {
    // Completions of device I/O: waking is all that is needed, the poller collects them.
    Status s = reactor_->Add(fd, EPOLLIN, [](uint32_t) {});
    if (!s.ok()) log_.Warn("cannot watch the device's completion fd", {{"error", s.message()}});
  }
  if (session_) {
    session_events_ = EPOLLIN | EPOLLRDHUP;
    Status s = reactor_->Add(session_->fd(), session_events_,
                             [this](uint32_t events) { OnSessionEvent(events); });
    if (!s.ok()) {
      log_.Error("cannot watch the client socket", {{"error", s.message()}});
      session_.reset();
      return s;
    }
    UpdateSessionInterest();
  }
  return Status::Ok();
}

Status DeviceEndpoint::SuspendAndSave(state::Writer& w, std::chrono::milliseconds timeout) {
  if (listener_.fd() < 0) return MakeError(ENOTCONN, "the endpoint is not serving");
  Unwatch();
  suspended_ = true;
  if (session_) {
    if (Status s = session_->Quiesce(timeout); !s.ok()) {
      return MakeError(s.code(), "cannot bring the session to a message boundary: " + s.message());
    }
    device_->Quiesce();
  }
  size_t mark = w.BeginSection(state::Tag::kEndpoint, kEndpointStateVersion);
  w.String(id_);
  w.String(socket_path_);
  w.Fd(listener_.fd());
  w.Bool(session_ != nullptr);
  if (session_) {
    w.Fd(session_->fd());
    w.U64(client_counter_);
    w.String(client_description_);
  }
  w.EndSection(mark);
  if (session_) {
    VFU_RETURN_IF_ERROR(session_->SaveState(w));
    VFU_RETURN_IF_ERROR(device_->SaveState(w));
  }
  return Status::Ok();
}

void DeviceEndpoint::Resume() {
  if (!suspended_) return;
  suspended_ = false;
  if (Status s = Watch(); !s.ok()) {
    log_.Error("cannot serve again after a failed handoff", {{"error", s.message()}});
    return;
  }
  log_.Info("serving again: the handoff did not complete");
  // Requests that arrived meanwhile wait in the socket; look now rather than on the next event.
  if (session_) OnSessionEvent(EPOLLIN);
}

void DeviceEndpoint::Release() {
  // Nothing is watched since SuspendAndSave. The session goes (its DMA maps, eventfds and
  // connection fd are this process's duplicates: the client does not notice), the listener's
  // path stays for the process that listens on it now.
  session_.reset();
  client_description_.clear();
  (void)listener_.Release();
  suspended_ = false;
}

Status DeviceEndpoint::StartFromState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kEndpoint, kEndpointStateVersion, nullptr);
  std::string id = s.String(4096);
  std::string path = s.String(4096);
  int listener_fd = s.Fd();
  bool has_client = s.Bool();
  int connection_fd = has_client ? s.Fd() : -1;
  uint64_t client_counter = has_client ? s.U64() : 0;
  std::string description = has_client ? s.String(4096) : std::string();
  if (s.ok() && (id != id_ || path != socket_path_)) {
    s.Fail("the record is for device " + id + " at " + path + ", not " + id_ + " at " +
           socket_path_);
  }
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  auto listener = UnixListener::Adopt(UniqueFd(::fcntl(listener_fd, F_DUPFD_CLOEXEC, 0)), path);
  if (!listener) return listener.error();
  std::unique_ptr<Session> session;
  if (has_client) {
    UniqueFd fd(::fcntl(connection_fd, F_DUPFD_CLOEXEC, 0));
    if (!fd) return MakeError(errno, "cannot duplicate the client's connection");
    LogContext session_log(log_.fields());
    session_log.Set("client", std::to_string(client_counter));
    auto restored =
        Session::Restore(UnixConnection(std::move(fd)), device_, options_, session_log, r);
    if (!restored) {
      (void)listener->Release();  // the old process still serves on this path
      return restored.error();
    }
    session = std::move(*restored);
    if (Status st = device_->RestoreState(r); !st.ok()) {
      session.reset();
      (void)listener->Release();
      return st;
    }
  }
  listener_ = std::move(*listener);
  session_ = std::move(session);
  client_counter_ = client_counter;
  client_description_ = description;
  if (Status st = Watch(); !st.ok()) {
    session_.reset();
    (void)listener_.Release();
    return st;
  }
  log_.Info("serving after a handoff",
            {{"socket", socket_path_}, {"client", has_client ? client_description_ : "none"}});
  // Requests the client sent during the handoff wait in the socket.
  if (session_) OnSessionEvent(EPOLLIN);
  return Status::Ok();
}

}  // namespace vfu
