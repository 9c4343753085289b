// The configuration file: a valid document gives devices exactly as the command line would;
// every invalid field gives an error naming the file, the line and what is wrong. The quick
// --device form's socket owner and mode (owner=UID:GID,mode=OCTAL) are checked the same way.
#include "server/config/server_config.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace vfu::config {
namespace {

constexpr char kValid[] = R"(apiVersion: vfio-user.io/v1alpha1
kind: ServerConfig
settings:
  socketRoot: /run/vfu
  logLevel: debug
  logFormat: json
  pollThreads: 2
  socketOwner: {uid: 107, gid: 108, mode: "0660"}
devices:
  - id: disk0
    class: virtio-blk
    backend: {type: file, path: /var/lib/vfu/disk0.img}
    queues: 2
    queueSize: 128
    pollMode: busy
    pollThread: 1
    serial: SER0
  - id: scratch
    class: virtio-blk
    backend: {type: ram, size: 64Mi}
    readOnly: true
    socketOwner: {uid: 0, gid: 0, mode: "0600"}
  - id: probe
    class: sample
)";

TEST(ServerConfig, ValidDocumentGivesDevicesAndSettings) {
  auto cfg = ParseServerConfig(kValid, "test.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  EXPECT_EQ(cfg->settings.socket_root, "/run/vfu");
  EXPECT_EQ(cfg->settings.control_socket, "/run/vfu/control.sock");
  EXPECT_EQ(cfg->settings.log_level, "debug");
  EXPECT_EQ(cfg->settings.log_format, "json");
  EXPECT_EQ(cfg->settings.poll_threads, 2u);
  ASSERT_EQ(cfg->devices.size(), 3u);
  const auto& d0 = cfg->devices[0];
  EXPECT_EQ(d0.spec.id, "disk0");
  EXPECT_EQ(d0.spec.device_class, "virtio-blk");
  EXPECT_EQ(d0.spec.socket, "/run/vfu/disk0/vfio-user.sock");
  EXPECT_EQ(d0.spec.params.at("backend"), "file");
  EXPECT_EQ(d0.spec.params.at("path"), "/var/lib/vfu/disk0.img");
  EXPECT_EQ(d0.spec.params.at("queues"), "2");
  EXPECT_EQ(d0.spec.params.at("queue-size"), "128");
  EXPECT_EQ(d0.spec.params.at("poll"), "busy");
  EXPECT_EQ(d0.spec.params.at("serial"), "SER0");
  EXPECT_EQ(d0.poll_thread, 1u);
  EXPECT_EQ(d0.socket_owner.gid, 108u);
  EXPECT_EQ(d0.socket_owner.mode, 0660u);
  const auto& d1 = cfg->devices[1];
  EXPECT_EQ(d1.spec.params.at("size"), "64M");
  EXPECT_EQ(d1.spec.params.at("readonly"), "on");
  EXPECT_EQ(d1.socket_owner.uid, 0u);
  EXPECT_EQ(d1.socket_owner.mode, 0600u);
  EXPECT_EQ(cfg->devices[2].spec.device_class, "sample");
  // The specs build real devices.
  for (const auto& d : cfg->devices) {
    if (d.spec.params.count("path")) continue;  // the file does not exist here
    auto dev = devices::CreateDevice(d.spec);
    EXPECT_TRUE(dev.ok()) << d.spec.id << ": " << dev.error().message;
  }
}

TEST(ServerConfig, DefaultsApplyWhenSettingsAreAbsent) {
  auto cfg = ParseServerConfig("apiVersion: vfio-user.io/v1alpha1\ndevices: []\n", "x.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  EXPECT_EQ(cfg->settings.socket_root, "/var/run/vfio-user");
  EXPECT_EQ(cfg->settings.socket_owner.uid, 107u);
  EXPECT_EQ(cfg->settings.socket_owner.gid, 107u);
  EXPECT_EQ(cfg->settings.socket_owner.mode, 0660u);
  EXPECT_EQ(cfg->settings.poll_threads, 1u);
  EXPECT_TRUE(cfg->devices.empty());
}

struct BadCase {
  const char* name;
  std::string yaml;
  std::string expected;  // substring of the message, after "bad.yaml:LINE: "
  int line;
};

std::string Doc(const std::string& devices, const std::string& settings = "") {
  return "apiVersion: vfio-user.io/v1alpha1\n" + settings + "devices:\n" + devices;
}

class ServerConfigErrors : public ::testing::TestWithParam<BadCase> {};

TEST_P(ServerConfigErrors, NameTheFileLineAndProblem) {
  const BadCase& c = GetParam();
  auto cfg = ParseServerConfig(c.yaml, "bad.yaml");
  ASSERT_FALSE(cfg.ok()) << c.name;
  const std::string& msg = cfg.error().message;
  EXPECT_EQ(msg.rfind("bad.yaml:" + std::to_string(c.line) + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    EveryField, ServerConfigErrors,
    ::testing::Values(
        BadCase{"NotYaml", "apiVersion: [unclosed\n", "not valid YAML", 2},
        BadCase{"NotAMapping", "- a\n- b\n", "must be a mapping", 1},
        BadCase{"MissingApiVersion", "devices: []\n", "apiVersion is missing", 1},
        BadCase{"WrongApiVersion", "apiVersion: v2\n", "apiVersion 'v2' is not supported", 1},
        BadCase{"WrongKind", "apiVersion: vfio-user.io/v1alpha1\nkind: Pod\n",
                "kind must be ServerConfig", 2},
        BadCase{"UnknownTopLevelField", "apiVersion: vfio-user.io/v1alpha1\nextra: 1\n",
                "unknown field 'extra'", 2},
        BadCase{"UnknownSetting", Doc("[]\n", "settings:\n  pollthreads: 2\n"),
                "unknown field 'pollthreads' in settings", 3},
        BadCase{"RelativeSocketRoot", Doc("[]\n", "settings:\n  socketRoot: run/vfu\n"),
                "socketRoot must be an absolute path", 3},
        BadCase{"BadLogLevel", Doc("[]\n", "settings:\n  logLevel: loud\n"), "logLevel must be", 3},
        BadCase{"BadLogFormat", Doc("[]\n", "settings:\n  logFormat: xml\n"),
                "logFormat must be text or json", 3},
        BadCase{"ZeroPollThreads", Doc("[]\n", "settings:\n  pollThreads: 0\n"),
                "pollThreads must be between 1 and 64", 3},
        BadCase{"PollThreadCpusNotAList",
                Doc("[]\n", "settings:\n  pollThreads: 1\n  pollThreadCpus: \"0\"\n"),
                "pollThreadCpus must be a list", 4},
        BadCase{"PollThreadCpusCountMismatch",
                Doc("[]\n", "settings:\n  pollThreads: 2\n  pollThreadCpus: [\"0\"]\n"),
                "pollThreadCpus has 1 entries but pollThreads is 2", 4},
        BadCase{"PollThreadCpusBadList", Doc("[]\n", "settings:\n  pollThreadCpus: [\"3-1\"]\n"),
                "'3-1' is not a CPU list", 3},
        BadCase{"NegativeUid", Doc("[]\n", "settings:\n  socketOwner: {uid: -1}\n"),
                "socketOwner.uid must be a whole number", 3},
        BadCase{"BadMode", Doc("[]\n", "settings:\n  socketOwner: {mode: \"0999\"}\n"),
                "socketOwner.mode must be an octal mode", 3},
        BadCase{"DevicesNotAList", "apiVersion: vfio-user.io/v1alpha1\ndevices: {a: 1}\n",
                "devices must be a list", 2},
        BadCase{"DeviceWithoutId", Doc("  - class: sample\n"), "device has no id", 3},
        BadCase{"BadId", Doc("  - id: Disk_0\n    class: sample\n"),
                "id 'Disk_0' must be lowercase", 3},
        BadCase{"DuplicateId", Doc("  - id: a\n    class: sample\n  - id: a\n    class: sample\n"),
                "device id 'a' is used twice", 5},
        BadCase{"NoClass", Doc("  - id: a\n"), "device a has no class", 3},
        BadCase{"UnknownClass", Doc("  - id: a\n    class: gpu\n"), "class 'gpu' is not supported",
                4},
        BadCase{"UnknownDeviceField", Doc("  - id: a\n    class: sample\n    color: red\n"),
                "unknown field 'color' in a device", 5},
        BadCase{"NoBackend", Doc("  - id: a\n    class: virtio-blk\n"), "needs a backend", 3},
        BadCase{"BadBackendType",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: nfs}\n"),
                "backend.type 'nfs' must be file, ram or null", 5},
        BadCase{"FileWithoutPath",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: file}\n"),
                "a file backend needs a path", 5},
        BadCase{"RelativePath",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: file, path: d.img}\n"),
                "backend.path must be absolute", 5},
        BadCase{"FileWithSize",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: file, path: /d.img, "
                    "size: 1Gi}\n"),
                "takes its size from the file", 5},
        BadCase{"RamWithoutSize",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: ram}\n"), "needs a size",
                5},
        BadCase{"BadSize",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: ram, size: lots}\n"),
                "backend.size 'lots'", 5},
        BadCase{"UnalignedSize",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: ram, size: \"1000\"}\n"),
                "multiple of 512", 5},
        BadCase{"TooManyQueues",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: null, size: 1Mi}\n    "
                    "queues: 65\n"),
                "queues must be between 1 and 64", 6},
        BadCase{"QueueSizeNotPowerOfTwo",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: null, size: 1Mi}\n    "
                    "queueSize: 100\n"),
                "queueSize must be a power of two", 6},
        BadCase{"BadPollMode",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: null, size: 1Mi}\n    "
                    "pollMode: lazy\n"),
                "pollMode 'lazy'", 6},
        BadCase{"PollThreadOutOfRange", Doc("  - id: a\n    class: sample\n    pollThread: 3\n"),
                "pollThread 3 but settings.pollThreads is 1", 5},
        BadCase{"ReadOnlyNotBool",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: null, size: 1Mi}\n    "
                    "readOnly: maybe\n"),
                "readOnly must be true or false", 6},
        BadCase{"LongSerial",
                Doc("  - id: a\n    class: virtio-blk\n    backend: {type: null, size: 1Mi}\n    "
                    "serial: abcdefghijklmnopqrstuvwxyz\n"),
                "serial is longer than 20 bytes", 6},
        BadCase{"SampleWithBackend",
                Doc("  - id: a\n    class: sample\n    backend: {type: null, size: 1Mi}\n"),
                "class sample has no backend", 5}),
    [](const ::testing::TestParamInfo<BadCase>& p) { return p.param.name; });

TEST(ServerConfig, PollThreadCpusPinEachThread) {
  auto cfg = ParseServerConfig(
      Doc("[]\n", "settings:\n  pollThreads: 2\n  pollThreadCpus: [\"0\", \"1,4-6\"]\n"), "x.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  ASSERT_EQ(cfg->settings.poll_thread_cpus.size(), 2u);
  EXPECT_EQ(cfg->settings.poll_thread_cpus[0], std::vector<int>{0});
  EXPECT_EQ(cfg->settings.poll_thread_cpus[1], (std::vector<int>{1, 4, 5, 6}));
}

// --device owner=UID:GID,mode=OCTAL: the socket's owner and mode, as socketOwner in a file.
TEST(QuickDevice, OwnerAndModeBecomeTheSocketOwnerAndLeaveTheClassOptions) {
  auto q = ParseQuickDevice(
      "virtio-blk,id=d0,socket=/run/vfu/d0.sock,backend=ram,size=1M,owner=64055:994,mode=0640");
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->spec.device_class, "virtio-blk");
  EXPECT_EQ(q->spec.id, "d0");
  EXPECT_EQ(q->spec.socket, "/run/vfu/d0.sock");
  EXPECT_EQ(q->spec.params,
            (std::map<std::string, std::string>{{"backend", "ram"}, {"size", "1M"}}));
  ASSERT_TRUE(q->socket_owner.has_value());
  EXPECT_EQ(q->socket_owner->uid, 64055u);
  EXPECT_EQ(q->socket_owner->gid, 994u);
  EXPECT_EQ(q->socket_owner->mode, 0640u);
}

TEST(QuickDevice, WithoutOwnerOrModeTheSocketKeepsTheServersDefaults) {
  auto q = ParseQuickDevice("sample,id=s,socket=/run/vfu/s.sock");
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_FALSE(q->socket_owner.has_value());
  EXPECT_TRUE(q->spec.params.empty());
}

TEST(QuickDevice, OwnerAloneGivesMode0660AndModeAloneKeepsTheOwner) {
  auto owner_only = ParseQuickDevice("sample,id=s,socket=/s.sock,owner=0:0");
  ASSERT_TRUE(owner_only.ok()) << owner_only.error().message;
  ASSERT_TRUE(owner_only->socket_owner.has_value());
  EXPECT_EQ(owner_only->socket_owner->uid, 0u);
  EXPECT_EQ(owner_only->socket_owner->gid, 0u);
  EXPECT_EQ(owner_only->socket_owner->mode, 0660u);
  auto mode_only = ParseQuickDevice("sample,id=s,socket=/s.sock,mode=666");
  ASSERT_TRUE(mode_only.ok()) << mode_only.error().message;
  ASSERT_TRUE(mode_only->socket_owner.has_value());
  EXPECT_EQ(mode_only->socket_owner->uid, kUnchangedUid);
  EXPECT_EQ(mode_only->socket_owner->gid, kUnchangedGid);
  EXPECT_EQ(mode_only->socket_owner->mode, 0666u);
  EXPECT_TRUE(mode_only->spec.params.empty());
}

struct QuickBadCase {
  const char* name;
  std::string text;
  std::string error;
};

class QuickDeviceErrors : public ::testing::TestWithParam<QuickBadCase> {};

TEST_P(QuickDeviceErrors, NameTheKeyAndTheExpectedForm) {
  auto q = ParseQuickDevice(GetParam().text);
  ASSERT_FALSE(q.ok()) << GetParam().text;
  EXPECT_NE(q.error().message.find(GetParam().error), std::string::npos) << q.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, QuickDeviceErrors,
    ::testing::Values(
        QuickBadCase{"OwnerWithoutGid", "sample,id=s,socket=/s,owner=107",
                     "owner=107 must be UID:GID, two numbers from 0 to 4294967294"},
        QuickBadCase{"OwnerByName", "sample,id=s,socket=/s,owner=libvirt-qemu:kvm",
                     "owner=libvirt-qemu:kvm must be UID:GID"},
        QuickBadCase{"NegativeUid", "sample,id=s,socket=/s,owner=-1:0",
                     "owner=-1:0 must be UID:GID"},
        QuickBadCase{"EmptyGid", "sample,id=s,socket=/s,owner=107:", "owner=107: must be UID:GID"},
        QuickBadCase{"UidTooLarge", "sample,id=s,socket=/s,owner=4294967295:0",
                     "owner=4294967295:0 must be UID:GID"},
        QuickBadCase{"ThreeParts", "sample,id=s,socket=/s,owner=1:2:3",
                     "owner=1:2:3 must be UID:GID"},
        QuickBadCase{"ModeNotOctal", "sample,id=s,socket=/s,owner=1:2,mode=0999",
                     "mode=0999 must be the socket's permission bits in octal"},
        QuickBadCase{"ModeTooLarge", "sample,id=s,socket=/s,mode=1777", "mode=1777 must be"},
        QuickBadCase{"ModeEmpty", "sample,id=s,socket=/s,mode=", "mode= must be"},
        QuickBadCase{"ModeSymbolic", "sample,id=s,socket=/s,mode=rw", "mode=rw must be"},
        QuickBadCase{"OwnerTwice", "sample,id=s,socket=/s,owner=1:1,owner=2:2",
                     "key 'owner' given twice"},
        QuickBadCase{"NoSocket", "sample,id=s,owner=1:1", "has no socket="}),
    [](const ::testing::TestParamInfo<QuickBadCase>& p) { return p.param.name; });

TEST(ServerConfig, MissingFileIsAClearError) {
  auto cfg = LoadServerConfig("/nonexistent/vfu.yaml");
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.error().message.find("/nonexistent/vfu.yaml"), std::string::npos);
}

}  // namespace
}  // namespace vfu::config
