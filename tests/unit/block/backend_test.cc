// Every block backend kind behaves the same: data written reads back, flush completes,
// discard and write-zeroes read back as zeros, bad ranges and read-only writes are refused,
// and completions arrive through Reap (waking event_fd when the backend is asynchronous).
#include "server/block/backend.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/subprocess.h"

namespace vfu::block {
namespace {

constexpr uint64_t kSize = 4 << 20;

enum class Kind { kNull, kRam, kFileIoUring, kFileThreadPool };

std::string KindName(Kind k) {
  switch (k) {
    case Kind::kNull:
      return "Null";
    case Kind::kRam:
      return "Ram";
    case Kind::kFileIoUring:
      return "FileIoUring";
    case Kind::kFileThreadPool:
      return "FileThreadPool";
  }
  return "?";
}

class BackendTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    path_ = dir_.File("disk.img");
    FILE* f = std::fopen(path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(::ftruncate(fileno(f), kSize), 0);
    std::fclose(f);
    backend_ = Make(false);
    ASSERT_NE(backend_, nullptr);
  }

  std::unique_ptr<Backend> Make(bool read_only) {
    switch (GetParam()) {
      case Kind::kNull:
        return CreateNullBackend(kSize);
      case Kind::kRam: {
        auto b = CreateRamBackend(kSize);
        return b.ok() ? std::move(*b) : nullptr;
      }
      case Kind::kFileIoUring:
      case Kind::kFileThreadPool: {
        FileBackendOptions o;
        o.path = path_;
        o.read_only = read_only;
        o.engine = GetParam() == Kind::kFileIoUring ? FileBackendOptions::Engine::kIoUring
                                                    : FileBackendOptions::Engine::kThreadPool;
        auto b = CreateFileBackend(o);
        EXPECT_TRUE(b.ok()) << b.error().message;
        return b.ok() ? std::move(*b) : nullptr;
      }
    }
    return nullptr;
  }

  bool stores_data() const { return GetParam() != Kind::kNull; }

  // Submits and waits (bounded) for that request's completion; returns its result.
  int Run(Backend& b, Request r) {
    static uint64_t next_tag = 1;
    r.tag = next_tag++;
    Status s = b.Submit(r);
    if (!s.ok()) return -s.code();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::vector<Completion> done;
    while (std::chrono::steady_clock::now() < deadline) {
      done.clear();
      b.Reap(&done);
      for (const Completion& c : done) {
        if (c.tag == r.tag) return c.result;
      }
      if (b.event_fd() >= 0) {
        pollfd p{b.event_fd(), POLLIN, 0};
        ::poll(&p, 1, 100);
      }
    }
    ADD_FAILURE() << "request did not complete";
    return -ETIMEDOUT;
  }

  int Transfer(Backend& b, Op op, uint64_t offset, std::vector<uint8_t>& buf) {
    // Two iovecs, to exercise vectored I/O.
    iovec iov[2] = {{buf.data(), buf.size() / 2}, {buf.data() + buf.size() / 2, buf.size() / 2}};
    return Run(b, Request{op, offset, buf.size(), iov, 2, 0});
  }

  testing::TempDir dir_;
  std::string path_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(BackendTest, WrittenDataReadsBack) {
  std::vector<uint8_t> data(8192);
  std::iota(data.begin(), data.end(), 7);
  ASSERT_EQ(Transfer(*backend_, Op::kWrite, 65536, data), 0);
  std::vector<uint8_t> back(8192, 0);
  ASSERT_EQ(Transfer(*backend_, Op::kRead, 65536, back), 0);
  if (stores_data()) {
    EXPECT_EQ(back, data);
  }
}

TEST_P(BackendTest, FlushCompletes) {
  EXPECT_EQ(Run(*backend_, Request{Op::kFlush, 0, 0, nullptr, 0, 0}), 0);
}

TEST_P(BackendTest, DiscardAndWriteZeroesReadBackAsZeros) {
  std::vector<uint8_t> ones(65536, 0xff);
  for (Op op : {Op::kDiscard, Op::kWriteZeroes}) {
    ASSERT_EQ(Transfer(*backend_, Op::kWrite, 0, ones), 0);
    ASSERT_EQ(Run(*backend_, Request{op, 4096, 32768, nullptr, 0, 0}), 0) << OpName(op);
    std::vector<uint8_t> back(65536, 0x11);
    ASSERT_EQ(Transfer(*backend_, Op::kRead, 0, back), 0);
    if (!stores_data()) continue;
    for (size_t i = 0; i < back.size(); ++i) {
      uint8_t want = (i >= 4096 && i < 4096 + 32768) ? 0 : 0xff;
      ASSERT_EQ(back[i], want) << OpName(op) << " byte " << i;
    }
  }
}

TEST_P(BackendTest, RangeBeyondTheEndIsRefused) {
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(Transfer(*backend_, Op::kRead, kSize - 2048, buf), -EINVAL);
  EXPECT_EQ(Transfer(*backend_, Op::kWrite, UINT64_MAX - 100, buf), -EINVAL);
  EXPECT_EQ(Run(*backend_, Request{Op::kDiscard, kSize, 1, nullptr, 0, 0}), -EINVAL);
}

TEST_P(BackendTest, QueueDepthIsEnforcedWithEagain) {
  std::vector<uint8_t> buf(512);
  iovec iov{buf.data(), buf.size()};
  size_t accepted = 0;
  Status last;
  for (int i = 0; i < 5000; ++i) {
    last = backend_->Submit(Request{Op::kRead, 0, buf.size(), &iov, 1, static_cast<uint64_t>(i)});
    if (!last.ok()) break;
    ++accepted;
  }
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.code(), EAGAIN);
  EXPECT_GT(accepted, 0u);
  // Drain everything (bounded) so buffers are not used after the test.
  std::vector<Completion> done;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (done.size() < accepted && std::chrono::steady_clock::now() < deadline) {
    backend_->Reap(&done);
    if (backend_->event_fd() >= 0) {
      pollfd p{backend_->event_fd(), POLLIN, 0};
      ::poll(&p, 1, 50);
    }
  }
  EXPECT_EQ(done.size(), accepted);
  EXPECT_EQ(backend_->inflight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(AllKinds, BackendTest,
                         ::testing::Values(Kind::kNull, Kind::kRam, Kind::kFileIoUring,
                                           Kind::kFileThreadPool),
                         [](const ::testing::TestParamInfo<Kind>& param) {
                           return KindName(param.param);
                         });

// The ram backend runs a batch when it is reaped; the batch must still behave as if each
// request ran at its Submit: in order, each one seeing the writes submitted before it. Ten
// requests, more than the prefetch distance, so that prefetching is exercised too.
TEST(RamBackendTest, ABatchReapedAtOnceRunsInSubmissionOrder) {
  auto made = CreateRamBackend(kSize);
  ASSERT_TRUE(made.ok());
  Backend& ram = **made;
  constexpr size_t kBlock = 4096;
  std::vector<std::vector<uint8_t>> buffers(10, std::vector<uint8_t>(kBlock, 0));
  std::vector<iovec> iov(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) iov[i] = {buffers[i].data(), kBlock};
  // Even requests write the pattern i into block 3, odd ones read it back.
  for (size_t i = 0; i < buffers.size(); i += 2) {
    std::memset(buffers[i].data(), static_cast<int>(i + 1), kBlock);
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    Op op = i % 2 == 0 ? Op::kWrite : Op::kRead;
    ASSERT_TRUE(ram.Submit(Request{op, 3 * kBlock, kBlock, &iov[i], 1, i}).ok());
  }
  EXPECT_EQ(ram.inflight(), buffers.size());
  std::vector<Completion> done;
  ASSERT_EQ(ram.Reap(&done), buffers.size());
  ASSERT_EQ(done.size(), buffers.size());
  for (size_t i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].tag, i);
    EXPECT_EQ(done[i].result, 0);
  }
  for (size_t i = 1; i < buffers.size(); i += 2) {
    EXPECT_EQ(buffers[i], std::vector<uint8_t>(kBlock, static_cast<uint8_t>(i)))
        << "read " << i << " must see the write just before it";
  }
  EXPECT_EQ(ram.inflight(), 0u);
}

// A ram disk is allocated as it is written, like a sparse file: its size may exceed the machine's
// memory under the default overcommit policy (the old memfd backend allowed that; an anonymous
// mapping needs MAP_NORESERVE for it).
TEST(RamBackendTest, ADiskLargerThanMemoryIsCreatedAndReadsZerosAtItsEnd) {
  std::ifstream policy("/proc/sys/vm/overcommit_memory");
  int mode = 0;
  policy >> mode;
  constexpr uint64_t kHuge = uint64_t{1} << 40;  // 1 TiB
  auto made = CreateRamBackend(kHuge);
  if (mode == 2) {
    // Strict overcommit accounting (vm.overcommit_memory=2) ignores MAP_NORESERVE: the only
    // right answer there is a clear refusal.
    ASSERT_FALSE(made.ok());
    EXPECT_EQ(made.error().code, ENOMEM) << made.error().message;
    return;
  }
  ASSERT_TRUE(made.ok()) << made.error().message;
  std::vector<uint8_t> block(4096, 0xee);
  iovec iov{block.data(), block.size()};
  ASSERT_TRUE((*made)->Submit(Request{Op::kRead, kHuge - 4096, 4096, &iov, 1, 1}).ok());
  std::vector<Completion> done;
  ASSERT_EQ((*made)->Reap(&done), 1u);
  EXPECT_EQ(done[0].result, 0);
  EXPECT_EQ(block, std::vector<uint8_t>(4096, 0));
}

class FileBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.File("disk.img");
    FILE* f = std::fopen(path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(::ftruncate(fileno(f), kSize), 0);
    std::fclose(f);
  }
  testing::TempDir dir_;
  std::string path_;
};

TEST_F(FileBackendTest, ReadOnlyBackendRefusesWritesWithErofs) {
  auto b = CreateFileBackend({.path = path_, .read_only = true});
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_TRUE((*b)->read_only());
  std::vector<uint8_t> buf(4096);
  iovec iov{buf.data(), buf.size()};
  EXPECT_EQ((*b)->Submit(Request{Op::kWrite, 0, buf.size(), &iov, 1, 1}).code(), EROFS);
  EXPECT_EQ((*b)->Submit(Request{Op::kDiscard, 0, 4096, nullptr, 0, 2}).code(), EROFS);
}

TEST_F(FileBackendTest, MissingFileIsAClearError) {
  auto b = CreateFileBackend({.path = dir_.File("nope.img")});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, ENOENT);
  EXPECT_NE(b.error().message.find("nope.img"), std::string::npos);
}

TEST_F(FileBackendTest, EmptyFileIsRefused) {
  std::string empty = dir_.File("empty.img");
  FILE* f = std::fopen(empty.c_str(), "w");
  std::fclose(f);
  auto b = CreateFileBackend({.path = empty});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, EINVAL);
}

TEST_F(FileBackendTest, DeletedBackingFileIsReportedAsUnhealthy) {
  auto b = CreateFileBackend({.path = path_});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->health_error(), "");
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  EXPECT_NE((*b)->health_error().find("was deleted"), std::string::npos);
}

TEST_F(FileBackendTest, FlushedWritesAreInTheFile) {
  auto b = CreateFileBackend({.path = path_});
  ASSERT_TRUE(b.ok());
  std::vector<uint8_t> data(4096, 0x5a);
  iovec iov{data.data(), data.size()};
  ASSERT_TRUE((*b)->Submit(Request{Op::kWrite, 8192, data.size(), &iov, 1, 1}).ok());
  ASSERT_TRUE((*b)->Submit(Request{Op::kFlush, 0, 0, nullptr, 0, 2}).ok());
  std::vector<Completion> done;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (done.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    (*b)->Reap(&done);
    pollfd p{(*b)->event_fd(), POLLIN, 0};
    ::poll(&p, 1, 50);
  }
  ASSERT_EQ(done.size(), 2u);
  for (const auto& c : done) EXPECT_EQ(c.result, 0);
  std::vector<uint8_t> back(4096);
  FILE* f = std::fopen(path_.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::fseek(f, 8192, SEEK_SET);
  ASSERT_EQ(std::fread(back.data(), 1, back.size(), f), back.size());
  std::fclose(f);
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace vfu::block
