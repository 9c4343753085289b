// SampleDevice: a small PCI device for exercising the protocol before the real devices (and
// for tests and benchmarks of the protocol path). BAR0 holds a few 32-bit registers (trapped:
// REGION_READ/WRITE); BAR2 is 4 KiB of shared memory the client can mmap. It raises INTx on
// request and can checksum or fill guest memory through the DMA map table.
//
// BAR0 registers (32-bit, little-endian):
//   0x00 MAGIC       RO  0x56465553 ("SUFV")
//   0x04 SCRATCH     RW
//   0x08 IRQ         W: 1 asserts INTx, 0 deasserts; R: 1 while asserted
//   0x0c COUNTER     RO  number of BAR0 accesses so far
//   0x10 DMA_ADDR_LO RW
//   0x14 DMA_ADDR_HI RW
//   0x18 DMA_LEN     RW
//   0x1c DMA_CMD     W: 1 = sum the bytes at [DMA_ADDR, +DMA_LEN) into DMA_RESULT,
//                       2 = fill that range with the low byte of SCRATCH
//   0x20 DMA_RESULT  RO
//   0x24 DMA_STATUS  RO  0 = ok, otherwise the errno of the last DMA command
//   0x28 SHM_SUM     RO  sum of the bytes of BAR2 (shows the client's mmap writes)
#pragma once

#include <cstdint>
#include <memory>

#include "server/common/mapping.h"
#include "server/common/unique_fd.h"
#include "server/pci/pci_device.h"

namespace vfu::devices {

class SampleDevice : public pci::PciDevice {
 public:
  static constexpr uint32_t kMagic = 0x56465553;
  static constexpr uint16_t kVendorId = 0x1b36;  // Red Hat, Inc. (QEMU's vendor ID)
  static constexpr uint16_t kDeviceId = 0x10f0;
  static constexpr uint64_t kRegisterBarSize = 4096;
  static constexpr uint64_t kSharedBarSize = 4096;

  enum Register : uint32_t {
    kRegMagic = 0x00,
    kRegScratch = 0x04,
    kRegIrq = 0x08,
    kRegCounter = 0x0c,
    kRegDmaAddrLo = 0x10,
    kRegDmaAddrHi = 0x14,
    kRegDmaLen = 0x18,
    kRegDmaCmd = 0x1c,
    kRegDmaResult = 0x20,
    kRegDmaStatus = 0x24,
    kRegShmSum = 0x28,
  };
  enum DmaCommand : uint32_t { kDmaSum = 1, kDmaFill = 2 };

  static Result<std::unique_ptr<SampleDevice>> Create();

  uint32_t scratch() const { return scratch_; }

 protected:
  Status BarRead(int bar, uint64_t offset, std::span<uint8_t> out) override;
  Status BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) override;
  Status ResetDevice() override;

 private:
  SampleDevice();
  uint32_t ReadRegister(uint32_t offset);
  void WriteRegister(uint32_t offset, uint32_t value);
  void RunDma(uint32_t command);

  UniqueFd shared_fd_;
  MemoryMapping shared_;
  uint32_t scratch_ = 0;
  uint32_t counter_ = 0;
  uint64_t dma_addr_ = 0;
  uint32_t dma_len_ = 0;
  uint32_t dma_result_ = 0;
  uint32_t dma_status_ = 0;
};

}  // namespace vfu::devices
