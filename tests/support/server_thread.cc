#include "tests/support/server_thread.h"

#include <future>

#include <gtest/gtest.h>

namespace vfu::testing {

std::string ServerThread::AddDevice(const std::string& spec_text) {
  auto spec = devices::ParseDeviceSpec(spec_text + ",socket=" + dir_.File("x"));
  if (!spec.ok()) {
    ADD_FAILURE() << spec.error().message;
    return {};
  }
  spec->socket = dir_.File(spec->id + ".sock");
  auto device = devices::CreateDevice(*spec);
  if (!device.ok()) {
    ADD_FAILURE() << device.error().message;
    return {};
  }
  return AddDeviceObject(spec->id, std::move(*device));
}

std::string ServerThread::AddDeviceObject(const std::string& id,
                                          std::unique_ptr<VfioDevice> device) {
  std::string socket = dir_.File(id + ".sock");
  devices_.push_back(std::move(device));
  endpoints_.push_back(
      std::make_unique<DeviceEndpoint>(id, socket, devices_.back().get(), &reactor_));
  Status s = endpoints_.back()->Start();
  if (!s.ok()) ADD_FAILURE() << s.message();
  return socket;
}

Status ServerThread::AdoptDevice(const std::string& spec_text, std::span<const uint8_t> record,
                                 std::span<const int> fds) {
  auto spec = devices::ParseDeviceSpec(spec_text);
  if (!spec.ok()) return spec.error();
  auto device = devices::CreateDevice(*spec);
  if (!device.ok()) return device.error();
  devices_.push_back(std::move(*device));
  endpoints_.push_back(
      std::make_unique<DeviceEndpoint>(spec->id, spec->socket, devices_.back().get(), &reactor_));
  auto reader = state::Reader::Open(record, fds);
  if (!reader.ok()) return reader.error();
  Status result;
  RunOnReactor([&] { result = endpoints_.back()->StartFromState(*reader); });
  return result;
}

void ServerThread::Start() {
  running_ = true;
  thread_ = std::thread([this] { reactor_.Run(); });
}

void ServerThread::RunOnReactor(const std::function<void()>& fn) {
  if (!running_) {
    fn();
    return;
  }
  std::promise<void> done;
  reactor_.Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

void ServerThread::Stop() {
  if (running_) {
    reactor_.Stop();
    thread_.join();
    running_ = false;
  }
  endpoints_.clear();
  devices_.clear();
}

}  // namespace vfu::testing
