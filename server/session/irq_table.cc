#include "server/session/irq_table.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <string_view>

#include "server/common/checked_math.h"

namespace vfu {

IrqTable::IrqTable(const std::vector<IrqDescription>& indexes) {
  for (const IrqDescription& d : indexes) {
    Index idx;
    idx.desc = d;
    idx.vectors.resize(d.count);
    indexes_.push_back(std::move(idx));
  }
}

Status IrqTable::Apply(const proto::SetIrqsRequest& request, std::vector<UniqueFd> fds,
                       std::vector<MaskChange>* changes) {
  const wire::IrqSet& s = request.set;
  if (s.index >= indexes_.size()) {
    return MakeError(EINVAL, "SET_IRQS index " + std::to_string(s.index) + " out of range");
  }
  Index& idx = indexes_[s.index];
  uint32_t data = s.flags & wire::kIrqSetDataMask;
  uint32_t action = s.flags & wire::kIrqSetActionMaskAll;

  if (s.count == 0) {  // DATA_NONE only (checked by the decoder)
    if (action == wire::kIrqSetActionTrigger) {
      for (Vector& v : idx.vectors) {
        v.trigger.Reset();
        v.pending = false;
      }
    }
    return Status::Ok();
  }
  if (!RangeWithin(s.start, s.count, idx.vectors.size())) {
    return MakeError(EINVAL, "SET_IRQS [" + std::to_string(s.start) + ", +" +
                                 std::to_string(s.count) + ") outside index " +
                                 std::to_string(s.index) + " with " +
                                 std::to_string(idx.vectors.size()) + " vectors");
  }
  if ((action == wire::kIrqSetActionMask || action == wire::kIrqSetActionUnmask) &&
      !(idx.desc.flags & wire::kIrqInfoMaskable)) {
    return MakeError(EINVAL, "SET_IRQS mask/unmask on a non-maskable index");
  }
  if (data == wire::kIrqSetDataEventfd) {
    if (action != wire::kIrqSetActionTrigger) {
      return MakeError(ENOTSUP, "SET_IRQS eventfds for mask/unmask are not supported");
    }
    if (!(idx.desc.flags & wire::kIrqInfoEventfd)) {
      return MakeError(EINVAL, "SET_IRQS eventfd on an index without eventfd support");
    }
    // All of them are checked before any is changed or taken: a bad one changes nothing.
    for (size_t i = 0; i < fds.size(); ++i) {
      VFU_RETURN_IF_ERROR(CheckIsEventfd(fds[i].get(), s.start + static_cast<uint32_t>(i)));
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      VFU_RETURN_IF_ERROR(MakeNonBlocking(fds[i].get(), s.start + static_cast<uint32_t>(i)));
    }
    for (uint32_t i = 0; i < s.count; ++i) {
      Vector& v = idx.vectors[s.start + i];
      v.trigger = fds.empty() ? UniqueFd() : std::move(fds[i]);
      // An interrupt raised while no eventfd was attached is delivered now (and, on an
      // automasked index such as INTx, masks the vector as any delivery does).
      if (v.trigger.valid() && v.pending && !v.masked) {
        v.pending = false;
        Signal(v);
        if (idx.desc.flags & wire::kIrqInfoAutomasked) {
          v.masked = true;
          if (changes != nullptr) changes->push_back({s.index, s.start + i, true});
        }
      }
    }
    return Status::Ok();
  }
  for (uint32_t i = 0; i < s.count; ++i) {
    if (data == wire::kIrqSetDataBool && request.bools[i] == 0) continue;
    uint32_t vector = s.start + i;
    switch (action) {
      case wire::kIrqSetActionMask:
        SetMask(s.index, vector, true, changes);
        break;
      case wire::kIrqSetActionUnmask:
        SetMask(s.index, vector, false, changes);
        break;
      case wire::kIrqSetActionTrigger:
        Trigger(s.index, vector);
        break;
      default:
        break;
    }
  }
  return Status::Ok();
}

void IrqTable::SetMask(uint32_t index, uint32_t vector, bool masked,
                       std::vector<MaskChange>* changes) {
  Vector& v = indexes_[index].vectors[vector];
  bool was = v.masked;
  v.masked = masked;
  if (!masked && v.pending && v.trigger.valid()) {
    v.pending = false;
    Signal(v);
    if (indexes_[index].desc.flags & wire::kIrqInfoAutomasked) v.masked = true;
  }
  if (was != v.masked && changes != nullptr) changes->push_back({index, vector, v.masked});
}

Status IrqTable::CheckIsEventfd(int fd, uint32_t vector) {
  // Only eventfds: an interrupt is an 8-byte counter write, and any other file (a full pipe, a
  // FIFO nobody reads) could make that write block the poll thread. (Without /proc the check
  // is skipped; MakeNonBlocking still keeps the write from blocking.)
  char target[64] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n >= 0 && std::string_view(target, static_cast<size_t>(n)) != "anon_inode:[eventfd]") {
    return MakeError(EINVAL, "SET_IRQS vector " + std::to_string(vector) +
                                 ": the fd is not an eventfd (" + std::string(target) + ")");
  }
  return Status::Ok();
}

Status IrqTable::MakeNonBlocking(int fd, uint32_t vector) {
  // Non-blocking, so that a counter the client filled to its maximum cannot block the write
  // either (the interrupt is then already pending for the client). The flag lives in the open
  // file shared with the client; eventfd readers (QEMU's event notifiers) are non-blocking anyway.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || (!(flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)) {
    return MakeError(errno, "SET_IRQS vector " + std::to_string(vector) +
                                ": cannot make the eventfd non-blocking");
  }
  return Status::Ok();
}

bool IrqTable::Signal(Vector& v) {
  uint64_t one = 1;
  ssize_t n = ::write(v.trigger.get(), &one, sizeof(one));
  if (n == sizeof(one)) {
    ++delivered_;
    return true;
  }
  return false;
}

bool IrqTable::Trigger(uint32_t index, uint32_t vector) {
  if (index >= indexes_.size() || vector >= indexes_[index].vectors.size()) return false;
  Index& idx = indexes_[index];
  Vector& v = idx.vectors[vector];
  if (v.masked || !v.trigger.valid()) {
    v.pending = true;
    return false;
  }
  bool ok = Signal(v);
  if (idx.desc.flags & wire::kIrqInfoAutomasked) v.masked = true;
  return ok;
}

bool IrqTable::Pending(uint32_t index, uint32_t vector) const {
  return index < indexes_.size() && vector < indexes_[index].vectors.size() &&
         indexes_[index].vectors[vector].pending;
}

bool IrqTable::Masked(uint32_t index, uint32_t vector) const {
  return index < indexes_.size() && vector < indexes_[index].vectors.size() &&
         indexes_[index].vectors[vector].masked;
}

bool IrqTable::HasEventfd(uint32_t index, uint32_t vector) const {
  return index < indexes_.size() && vector < indexes_[index].vectors.size() &&
         indexes_[index].vectors[vector].trigger.valid();
}

void IrqTable::Clear() {
  for (Index& idx : indexes_) {
    for (Vector& v : idx.vectors) v = Vector{};
  }
}

size_t IrqTable::eventfd_count() const {
  size_t n = 0;
  for (const Index& idx : indexes_) {
    for (const Vector& v : idx.vectors) n += v.trigger.valid();
  }
  return n;
}

inline constexpr uint16_t kIrqsStateVersion = 1;

void IrqTable::SaveState(state::Writer& w) const {
  size_t mark = w.BeginSection(state::Tag::kIrqs, kIrqsStateVersion);
  w.U32(static_cast<uint32_t>(indexes_.size()));
  for (const Index& idx : indexes_) {
    w.U32(static_cast<uint32_t>(idx.vectors.size()));
    for (const Vector& v : idx.vectors) {
      w.Bool(v.trigger.valid());
      if (v.trigger.valid()) w.Fd(v.trigger.get());
      w.Bool(v.masked);
      w.Bool(v.pending);
    }
  }
  w.U64(delivered_);
  w.EndSection(mark);
}

Status IrqTable::RestoreState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kIrqs, kIrqsStateVersion, nullptr);
  uint32_t count = s.U32();
  if (s.ok() && count != indexes_.size()) {
    s.Fail(std::to_string(count) + " IRQ indexes, this device has " +
           std::to_string(indexes_.size()));
  }
  std::vector<std::vector<Vector>> vectors(indexes_.size());
  for (size_t i = 0; i < indexes_.size() && s.ok(); ++i) {
    uint32_t n = s.U32();
    if (s.ok() && n != indexes_[i].vectors.size()) {
      s.Fail("IRQ index " + std::to_string(i) + " has " + std::to_string(n) +
             " vectors, this device has " + std::to_string(indexes_[i].vectors.size()));
    }
    vectors[i].resize(n);
    for (uint32_t j = 0; j < n && s.ok(); ++j) {
      Vector& v = vectors[i][j];
      if (s.Bool()) {
        int fd = s.Fd();
        if (!s.ok()) break;
        VFU_RETURN_IF_ERROR(CheckIsEventfd(fd, j));
        v.trigger.Reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        if (!v.trigger) return MakeError(errno, "IRQ state: cannot duplicate an eventfd");
        VFU_RETURN_IF_ERROR(MakeNonBlocking(v.trigger.get(), j));
      }
      v.masked = s.Bool();
      v.pending = s.Bool();
    }
  }
  uint64_t delivered = s.U64();
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  for (size_t i = 0; i < indexes_.size(); ++i) indexes_[i].vectors = std::move(vectors[i]);
  delivered_ = delivered;
  return Status::Ok();
}

}  // namespace vfu
