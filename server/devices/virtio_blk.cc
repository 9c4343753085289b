#include "server/devices/virtio_blk.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "server/common/log.h"

namespace vfu::devices {
namespace {

constexpr size_t kPopBudget = 64;  // chains taken from one queue per round

// Copies `out.size()` bytes from the front of the segments.
bool CopyFromSegments(const std::vector<iovec>& segs, uint64_t skip, std::span<uint8_t> out) {
  size_t done = 0;
  for (const iovec& v : segs) {
    if (done == out.size()) break;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    size_t n = std::min<size_t>(v.iov_len - skip, out.size() - done);
    std::memcpy(out.data() + done, static_cast<uint8_t*>(v.iov_base) + skip, n);
    done += n;
    skip = 0;
  }
  return done == out.size();
}

// Appends the segments covering [skip, skip + len) of `segs` to *out.
void SliceSegments(const std::vector<iovec>& segs, uint64_t skip, uint64_t len,
                   std::vector<iovec>* out) {
  for (const iovec& v : segs) {
    if (len == 0) break;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    size_t n = std::min<uint64_t>(v.iov_len - skip, len);
    out->push_back({static_cast<uint8_t*>(v.iov_base) + skip, n});
    len -= n;
    skip = 0;
  }
}

}  // namespace

VirtioBlkDevice::VirtioBlkDevice(std::unique_ptr<block::Backend> backend, VirtioBlkOptions options)
    : backend_(std::move(backend)), options_(std::move(options)) {
  const char* names[] = {"read", "write", "flush", "discard", "write_zeroes", "get_id", "other"};
  for (size_t i = 0; i < op_counters_.size(); ++i) op_counters_[i].name = names[i];
  if (backend_->read_only()) options_.read_only = true;
  config_.capacity = backend_->size() / kSectorSize;
  config_.seg_max = options_.seg_max;
  config_.blk_size = options_.block_size;
  config_.num_queues = options_.num_queues;
  config_.max_discard_sectors = UINT32_MAX / kSectorSize;
  config_.max_discard_seg = 1;
  config_.discard_sector_alignment = options_.block_size / kSectorSize;
  config_.max_write_zeroes_sectors = UINT32_MAX / kSectorSize;
  config_.max_write_zeroes_seg = 1;
  config_.write_zeroes_may_unmap = 1;
  size_t max_inflight = size_t{options_.num_queues} * options_.queue_size;
  slots_.resize(max_inflight);
  for (int i = static_cast<int>(max_inflight) - 1; i >= 0; --i) free_slots_.push_back(i);
  interrupt_pending_.assign(options_.num_queues, false);
}

VirtioBlkDevice::~VirtioBlkDevice() {
  WaitForInflight();
  // The backend finishes (or cancels) what it still holds before retained guest memory is
  // unmapped with the members.
  backend_.reset();
}

uint64_t VirtioBlkDevice::device_features() const {
  uint64_t f = kBlkFeatureSegMax | kBlkFeatureBlkSize | kBlkFeatureFlush | kBlkFeatureDiscard |
               kBlkFeatureWriteZeroes;
  if (options_.num_queues > 1) f |= kBlkFeatureMq;
  if (options_.read_only) f |= kBlkFeatureRo;
  return f;
}

void VirtioBlkDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&config_);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = offset + i < sizeof(config_) ? bytes[offset + i] : 0;
  }
}

void VirtioBlkDevice::WriteConfig(uint32_t offset, std::span<const uint8_t> data) {
  // Only the writeback byte is writable (and only with CONFIG_WCE, which we do not offer).
  (void)offset;
  (void)data;
}

Status VirtioBlkDevice::Activate(virtio::VirtioContext* context) {
  context_ = context;
  std::fill(interrupt_pending_.begin(), interrupt_pending_.end(), false);
  return Status::Ok();
}

void VirtioBlkDevice::Reset() {
  // Buffers of in-flight requests are guest memory: let the backend finish with them, then
  // forget the requests (the driver is resetting; nothing is returned to it).
  WaitForInflight();
  context_ = nullptr;
}

void VirtioBlkDevice::WaitForInflight() {
  // Abandoned requests are not waited for again: they already had their timeout.
  auto deadline = std::chrono::steady_clock::now() + options_.inflight_timeout;
  while (inflight_count_ > abandoned_count_) {
    ForgetFinished();
    if (inflight_count_ == abandoned_count_) break;
    if (std::chrono::steady_clock::now() > deadline) {
      RetainMemoryForInflight(/*abandon=*/true, "a reset or detach");
      break;
    }
    WaitForBackend();
  }
}

size_t VirtioBlkDevice::ForgetFinished() {
  completions_.clear();
  size_t n = backend_->Reap(&completions_);
  for (const block::Completion& c : completions_) FreeSlot(slots_[c.tag], c.tag);
  return n;
}

void VirtioBlkDevice::WaitForBackend() {
  if (backend_->event_fd() >= 0) {
    pollfd p{backend_->event_fd(), POLLIN, 0};
    ::poll(&p, 1, 10);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void VirtioBlkDevice::RetainMemoryForInflight(bool abandon, const char* waiting_for) {
  size_t newly_pinned = 0;
  size_t newly_abandoned = 0;
  for (Inflight& s : slots_) {
    if (!s.used) continue;
    if (abandon && !s.abandoned) {
      s.abandoned = true;
      ++newly_abandoned;
    }
    if (!s.pins_memory) {
      s.pins_memory = true;
      ++newly_pinned;
    }
  }
  abandoned_count_ += newly_abandoned;
  pinned_count_ += newly_pinned;
  if (newly_pinned > 0 && context_ != nullptr && context_->memory() != nullptr) {
    if (auto kept = context_->memory()->Retain()) retained_memory_.push_back(std::move(kept));
  }
  Log::Write(LogLevel::kError,
             "virtio-blk: in-flight I/O did not finish in time; going on without it (guest "
             "memory stays mapped until it finishes)",
             {{"waiting_for", waiting_for},
              {"inflight", std::to_string(inflight_count_)},
              {"abandoned", std::to_string(newly_abandoned)},
              {"timeout_ms", std::to_string(options_.inflight_timeout.count())}});
}

void VirtioBlkDevice::FreeSlot(Inflight& s, uint64_t tag) {
  if (s.abandoned) --abandoned_count_;
  if (s.pins_memory && --pinned_count_ == 0 && !retained_memory_.empty()) {
    retained_memory_.clear();
    Log::Write(LogLevel::kInfo, "virtio-blk: late I/O finished; retained guest memory released",
               {});
  }
  s.used = false;
  s.abandoned = false;
  s.pins_memory = false;
  s.data.clear();
  free_slots_.push_back(static_cast<int>(tag));
  --inflight_count_;
}

PollResult VirtioBlkDevice::ProcessInactive() {
  // No driver: what finishes now was abandoned by the reset or detach that ended the last one.
  if (context_ != nullptr || inflight_count_ == 0) return PollResult::kIdle;
  return ForgetFinished() > 0 ? PollResult::kBusy : PollResult::kIdle;
}

void VirtioBlkDevice::DrainInflight() {
  auto deadline = std::chrono::steady_clock::now() + options_.inflight_timeout;
  while (inflight_count_ > abandoned_count_ && context_ != nullptr) {
    if (std::chrono::steady_clock::now() > deadline) {
      // The driver stays: its requests still complete to it when they finish.
      RetainMemoryForInflight(/*abandon=*/false, "a DMA unmap");
      break;
    }
    if (ReapCompletions() == 0) WaitForBackend();
  }
  for (uint16_t q = 0; q < options_.num_queues && context_ != nullptr; ++q) {
    if (interrupt_pending_[q]) {
      interrupt_pending_[q] = false;
      context_->InterruptQueue(q);
    }
  }
}

int VirtioBlkDevice::AllocateSlot() {
  if (free_slots_.empty()) return -1;
  int slot = free_slots_.back();
  free_slots_.pop_back();
  slots_[slot].used = true;
  ++inflight_count_;
  return slot;
}

PollResult VirtioBlkDevice::Process() {
  if (context_ == nullptr) return PollResult::kIdle;
  size_t work = ReapCompletions();
  for (uint16_t q = 0; q < options_.num_queues && context_ != nullptr; ++q) work += DrainQueue(q);
  if (context_ == nullptr) return PollResult::kBusy;  // the device was reset by a broken ring
  work += ReapCompletions();
  for (uint16_t q = 0; q < options_.num_queues; ++q) {
    if (interrupt_pending_[q]) {
      interrupt_pending_[q] = false;
      context_->InterruptQueue(q);
    }
  }
  return work > 0 ? PollResult::kBusy : PollResult::kIdle;
}

size_t VirtioBlkDevice::DrainQueue(uint16_t index) {
  virtio::SplitVirtqueue* queue = context_->queue(index);
  if (queue == nullptr) return 0;
  size_t started = 0;
  while (started < kPopBudget) {
    if (free_slots_.empty()) break;  // every slot busy: finish some first
    auto popped = queue->Pop(&chain_);
    if (!popped.ok()) {
      context_->SetNeedsReset("virtio-blk queue " + std::to_string(index) + ": " +
                              popped.error().message);
      return started + 1;
    }
    if (!*popped) break;
    if (started == 0) now_ns_ = MonotonicNowNs();
    ++started;
    StartRequest(index, chain_);
    if (context_ == nullptr) break;
  }
  return started;
}

void VirtioBlkDevice::Complete(uint16_t queue, uint16_t head, uint8_t* status, uint8_t value,
                               uint32_t written) {
  if (status != nullptr) *status = value;
  if (value == kBlkStatusIoErr) ++stats_.errors;
  if (value == kBlkStatusUnsupported) ++stats_.unsupported;
  virtio::SplitVirtqueue* q = context_ != nullptr ? context_->queue(queue) : nullptr;
  if (q == nullptr) return;
  q->Push(head, written);
  interrupt_pending_[queue] = true;
}

void VirtioBlkDevice::CountRequest(uint32_t type, uint8_t status, uint64_t bytes,
                                   uint64_t latency_ns) {
  size_t index = 6;
  switch (type) {
    case kBlkTypeIn:
      index = 0;
      break;
    case kBlkTypeOut:
      index = 1;
      break;
    case kBlkTypeFlush:
      index = 2;
      break;
    case kBlkTypeDiscard:
      index = 3;
      break;
    case kBlkTypeWriteZeroes:
      index = 4;
      break;
    case kBlkTypeGetId:
      index = 5;
      break;
    default:
      break;
  }
  OperationCounters& c = op_counters_[index];
  ++c.requests;
  if (status == kBlkStatusOk) {
    c.bytes += bytes;
  } else {
    ++c.errors;
  }
  c.latency.Observe(latency_ns);
}

std::string VirtioBlkDevice::health_error() const {
  std::string backend_error = backend_->health_error();
  if (!backend_error.empty()) return backend_error;
  if (consecutive_backend_errors_ >= kBlkUnhealthyAfterConsecutiveErrors) {
    return "repeated I/O errors: the last " + std::to_string(consecutive_backend_errors_) +
           " backend requests failed (" + std::strerror(-last_backend_error_) + ")";
  }
  return {};
}

void VirtioBlkDevice::CollectCounters(DeviceCounters* out) const {
  out->operations.insert(out->operations.end(), op_counters_.begin(), op_counters_.end());
}

void VirtioBlkDevice::StartRequest(uint16_t queue, virtio::DescriptorChain& chain) {
  // Requests that end here (malformed, GET_ID, nothing to transfer) are counted at once.
  uint32_t counted_type = kBlkTypeUnparsed;
  auto CompleteNow = [&](uint16_t q, uint16_t head, uint8_t* status_byte, uint8_t value,
                         uint32_t written) {
    CountRequest(counted_type, value, counted_type == kBlkTypeGetId ? written - 1 : 0, 0);
    Complete(q, head, status_byte, value, written);
  };
  // The status byte is the last device-writable byte of the chain (if the buffer holding it
  // translated: otherwise the last segment we have belongs to an earlier buffer, and the
  // request completes without a status write).
  uint8_t* status = nullptr;
  if (chain.last_writable_translated && !chain.writable.empty()) {
    const iovec& last = chain.writable.back();
    if (last.iov_len > 0) status = static_cast<uint8_t*>(last.iov_base) + last.iov_len - 1;
  }
  if (!chain.buffer_error.ok() || status == nullptr) {
    CompleteNow(queue, chain.head, status, kBlkStatusIoErr, status != nullptr ? 1 : 0);
    return;
  }
  BlkRequestHeader header{};
  header.type = kBlkTypeUnparsed;
  if (!CopyFromSegments(chain.readable, 0, {reinterpret_cast<uint8_t*>(&header), sizeof(header)})) {
    CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
    return;
  }
  counted_type = header.type;
  uint64_t capacity_bytes = config_.capacity * kSectorSize;
  uint64_t data_in = chain.writable_bytes - 1;                // excluding the status byte
  uint64_t data_out = chain.readable_bytes - sizeof(header);  // after the header

  block::Request request;
  Inflight slot_state;  // everything but the data segments, which go to data_scratch_
  data_scratch_.clear();
  switch (header.type) {
    case kBlkTypeIn:
    case kBlkTypeOut: {
      bool in = header.type == kBlkTypeIn;
      uint64_t len = in ? data_in : data_out;
      if (!in && options_.read_only) {
        CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
        return;
      }
      // used.len is 32 bits: a read must fit it with its status byte.
      if (len % kSectorSize != 0 || header.sector > capacity_bytes / kSectorSize ||
          len > capacity_bytes - header.sector * kSectorSize || (in && len >= UINT32_MAX)) {
        CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
        return;
      }
      if (in) {
        SliceSegments(chain.writable, 0, len, &data_scratch_);
      } else {
        SliceSegments(chain.readable, sizeof(header), len, &data_scratch_);
      }
      request.op = in ? block::Op::kRead : block::Op::kWrite;
      request.offset = header.sector * kSectorSize;
      request.length = len;
      slot_state.written = in ? static_cast<uint32_t>(len + 1) : 1;
      slot_state.bytes = len;
      if (len == 0) {  // nothing to transfer
        CompleteNow(queue, chain.head, status, kBlkStatusOk, 1);
        return;
      }
      break;
    }
    case kBlkTypeFlush:
      request.op = block::Op::kFlush;
      slot_state.written = 1;
      break;
    case kBlkTypeGetId: {
      uint8_t id[kBlkIdBytes] = {};
      std::memcpy(id, options_.serial.data(),
                  std::min<size_t>(options_.serial.size(), kBlkIdBytes));
      uint64_t n = std::min<uint64_t>(data_in, kBlkIdBytes);
      std::vector<iovec> dst;
      SliceSegments(chain.writable, 0, n, &dst);
      size_t at = 0;
      for (const iovec& v : dst) {
        std::memcpy(v.iov_base, id + at, v.iov_len);
        at += v.iov_len;
      }
      ++stats_.get_ids;
      CompleteNow(queue, chain.head, status, kBlkStatusOk, static_cast<uint32_t>(n + 1));
      return;
    }
    case kBlkTypeDiscard:
    case kBlkTypeWriteZeroes: {
      bool discard = header.type == kBlkTypeDiscard;
      BlkDiscardSegment seg{};
      if (data_out != sizeof(seg) ||
          !CopyFromSegments(chain.readable, sizeof(header),
                            {reinterpret_cast<uint8_t*>(&seg), sizeof(seg)})) {
        // We advertise one segment per request.
        CompleteNow(queue, chain.head, status, kBlkStatusUnsupported, 1);
        return;
      }
      if ((seg.flags & ~1u) != 0 || (discard && (seg.flags & 1u))) {
        CompleteNow(queue, chain.head, status, kBlkStatusUnsupported, 1);
        return;
      }
      if (options_.read_only || seg.sector > config_.capacity ||
          seg.num_sectors > config_.capacity - seg.sector) {
        CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
        return;
      }
      request.op = discard ? block::Op::kDiscard : block::Op::kWriteZeroes;
      request.offset = seg.sector * kSectorSize;
      request.length = uint64_t{seg.num_sectors} * kSectorSize;
      slot_state.written = 1;
      if (request.length == 0) {
        CompleteNow(queue, chain.head, status, kBlkStatusOk, 1);
        return;
      }
      break;
    }
    default:
      CompleteNow(queue, chain.head, status, kBlkStatusUnsupported, 1);
      return;
  }

  int slot = AllocateSlot();
  if (slot < 0) {  // cannot happen: DrainQueue checks for a free slot first
    CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
    return;
  }
  Inflight& s = slots_[slot];
  s.written = slot_state.written;
  s.bytes = slot_state.bytes;
  // Swap, not move: s.data was cleared when the slot was freed and keeps its capacity, which
  // data_scratch_ reuses for the next request (no allocation per request).
  s.data.swap(data_scratch_);
  s.queue = queue;
  s.head = chain.head;
  s.status = status;
  s.type = header.type;
  s.started_ns = now_ns_;
  request.iov = s.data.data();
  request.iovcnt = static_cast<int>(s.data.size());
  request.tag = static_cast<uint64_t>(slot);
  Status submitted = backend_->Submit(request);
  if (!submitted.ok()) {
    Log::Write(LogLevel::kWarn, "virtio-blk: backend refused a request",
               {{"op", block::OpName(request.op)}, {"error", submitted.message()}});
    FreeSlot(s, static_cast<uint64_t>(slot));
    CompleteNow(queue, chain.head, status, kBlkStatusIoErr, 1);
  }
}

size_t VirtioBlkDevice::ReapCompletions() {
  completions_.clear();
  size_t n = backend_->Reap(&completions_);
  uint64_t now = n > 0 ? MonotonicNowNs() : 0;
  for (const block::Completion& c : completions_) {
    Inflight& s = slots_[c.tag];
    if (s.abandoned) {
      FreeSlot(s, c.tag);
      continue;
    }
    bool ok = c.result == 0;
    CountRequest(s.type, ok ? kBlkStatusOk : kBlkStatusIoErr, s.bytes,
                 now > s.started_ns ? now - s.started_ns : 0);
    if (ok) {
      consecutive_backend_errors_ = 0;
    } else {
      ++consecutive_backend_errors_;
      last_backend_error_ = c.result;
    }
    if (ok) {
      switch (s.type) {
        case kBlkTypeIn:
          ++stats_.reads;
          stats_.read_bytes += s.bytes;
          break;
        case kBlkTypeOut:
          ++stats_.writes;
          stats_.write_bytes += s.bytes;
          break;
        case kBlkTypeFlush:
          ++stats_.flushes;
          break;
        case kBlkTypeDiscard:
          ++stats_.discards;
          break;
        case kBlkTypeWriteZeroes:
          ++stats_.write_zeroes;
          break;
      }
    }
    Complete(s.queue, s.head, s.status, ok ? kBlkStatusOk : kBlkStatusIoErr, ok ? s.written : 1);
    FreeSlot(s, c.tag);
  }
  return n;
}

}  // namespace vfu::devices
