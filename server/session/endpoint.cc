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
  Status s = reactor_->Add(listener_.fd(), EPOLLIN, [this](uint32_t) { OnAccept(); });
  if (!s.ok()) {
    listener_ = UnixListener();
    return s;
  }
  if (Poller* poller = device_->poller()) reactor_->AddPoller(poller, id_);
  if (int fd = device_->wake_fd(); fd >= 0) {
    // Completions of device I/O: waking is all that is needed, the poller collects them.
    s = reactor_->Add(fd, EPOLLIN, [](uint32_t) {});
    if (!s.ok()) log_.Warn("cannot watch the device's completion fd", {{"error", s.message()}});
  }
  log_.Info("listening", {{"socket", socket_path_}});
  return Status::Ok();
}

void DeviceEndpoint::Stop() {
  EndSession();
  if (listener_.fd() >= 0) {
    if (Poller* poller = device_->poller()) reactor_->RemovePoller(poller);
    if (int fd = device_->wake_fd(); fd >= 0) reactor_->Remove(fd);
    reactor_->Remove(listener_.fd());
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

}  // namespace vfu
