#include "server/devices/sample_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace vfu::devices {

SampleDevice::SampleDevice()
    : PciDevice({.vendor_id = kVendorId,
                 .device_id = kDeviceId,
                 .subsystem_vendor_id = kVendorId,
                 .subsystem_id = 0x0001,
                 .revision = 1,
                 .class_code = 0xff0000},  // "unassigned class": no guest driver binds
                pci::kConventionalConfigSize, /*has_intx=*/true) {}

Result<std::unique_ptr<SampleDevice>> SampleDevice::Create() {
  std::unique_ptr<SampleDevice> dev(new SampleDevice());
  dev->shared_fd_.Reset(::memfd_create("vfu-sample-bar2", MFD_CLOEXEC));
  if (!dev->shared_fd_) return MakeError(errno, "memfd_create failed");
  if (::ftruncate(dev->shared_fd_.get(), kSharedBarSize) != 0) {
    return MakeError(errno, "ftruncate of the BAR2 memfd failed");
  }
  auto mapping =
      MemoryMapping::Map(dev->shared_fd_.get(), 0, kSharedBarSize, PROT_READ | PROT_WRITE);
  if (!mapping) return mapping.error();
  dev->shared_ = std::move(*mapping);
  VFU_RETURN_IF_ERROR(dev->AddBar(0, {.size = kRegisterBarSize, .flags = 0}));
  VFU_RETURN_IF_ERROR(dev->AddBar(2, {.size = kSharedBarSize,
                                      .flags = 0,
                                      .mmap_fd = dev->shared_fd_.get(),
                                      .mmap_offset = 0,
                                      .mmap_areas = {{0, kSharedBarSize}}}));
  return dev;
}

Status SampleDevice::BarRead(int bar, uint64_t offset, std::span<uint8_t> out) {
  if (bar == 2) {
    std::memcpy(out.data(), shared_.data() + offset, out.size());
    return Status::Ok();
  }
  // Registers are 32-bit; narrower or unaligned reads see the bytes of the containing ones.
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t byte = offset + i;
    uint32_t reg = ReadRegister(static_cast<uint32_t>(byte & ~3ull));
    out[i] = static_cast<uint8_t>(reg >> (8 * (byte & 3)));
  }
  ++counter_;
  return Status::Ok();
}

Status SampleDevice::BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar == 2) {
    std::memcpy(shared_.data() + offset, data.data(), data.size());
    return Status::Ok();
  }
  ++counter_;
  if (offset % 4 != 0 || data.size() != 4) {
    return MakeError(EINVAL, "sample device registers take aligned 32-bit writes");
  }
  uint32_t value;
  std::memcpy(&value, data.data(), 4);
  WriteRegister(static_cast<uint32_t>(offset), value);
  return Status::Ok();
}

uint32_t SampleDevice::ReadRegister(uint32_t offset) {
  switch (offset) {
    case kRegMagic:
      return kMagic;
    case kRegScratch:
      return scratch_;
    case kRegIrq:
      return intx_asserted() ? 1 : 0;
    case kRegCounter:
      return counter_;
    case kRegDmaAddrLo:
      return static_cast<uint32_t>(dma_addr_);
    case kRegDmaAddrHi:
      return static_cast<uint32_t>(dma_addr_ >> 32);
    case kRegDmaLen:
      return dma_len_;
    case kRegDmaResult:
      return dma_result_;
    case kRegDmaStatus:
      return dma_status_;
    case kRegShmSum: {
      uint32_t sum = 0;
      for (size_t i = 0; i < kSharedBarSize; ++i) sum += shared_.data()[i];
      return sum;
    }
    default:
      return 0;
  }
}

void SampleDevice::WriteRegister(uint32_t offset, uint32_t value) {
  switch (offset) {
    case kRegScratch:
      scratch_ = value;
      break;
    case kRegIrq:
      SetIntx(value != 0);
      break;
    case kRegDmaAddrLo:
      dma_addr_ = (dma_addr_ & ~0xffffffffull) | value;
      break;
    case kRegDmaAddrHi:
      dma_addr_ = (dma_addr_ & 0xffffffffull) | (uint64_t{value} << 32);
      break;
    case kRegDmaLen:
      dma_len_ = value;
      break;
    case kRegDmaCmd:
      RunDma(value);
      break;
    default:
      break;  // read-only or unused: ignored, as hardware does
  }
}

void SampleDevice::RunDma(uint32_t command) {
  if (context() == nullptr || !bus_master_enabled()) {
    dma_status_ = EPERM;
    return;
  }
  if (dma_len_ > (1u << 20)) {
    dma_status_ = E2BIG;
    return;
  }
  std::vector<uint8_t> buf(dma_len_);
  Status s;
  if (command == kDmaSum) {
    s = context()->guest_memory().Read(dma_addr_, buf);
    if (s.ok()) {
      uint32_t sum = 0;
      for (uint8_t b : buf) sum += b;
      dma_result_ = sum;
    }
  } else if (command == kDmaFill) {
    // An empty vector's data() may be null, and memset(nullptr, _, 0) is undefined.
    if (!buf.empty()) std::memset(buf.data(), scratch_ & 0xff, buf.size());
    s = context()->guest_memory().Write(dma_addr_, buf);
  } else {
    s = MakeError(EINVAL, "unknown DMA command");
  }
  dma_status_ = s.ok() ? 0 : static_cast<uint32_t>(s.code());
}

Status SampleDevice::ResetDevice() {
  scratch_ = 0;
  counter_ = 0;
  dma_addr_ = 0;
  dma_len_ = 0;
  dma_result_ = 0;
  dma_status_ = 0;
  std::memset(shared_.data(), 0, kSharedBarSize);
  return Status::Ok();
}

}  // namespace vfu::devices
