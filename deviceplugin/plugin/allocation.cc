#include "deviceplugin/plugin/allocation.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <optional>
#include <set>

namespace vfu::deviceplugin {

std::string PluginSocketName(const std::string& device_class) {
  return "vfio-user-" + device_class + ".sock";
}

std::string EnvVarPrefix(const std::string& device_class) {
  std::string out = "VFIO_USER_";
  for (char c : device_class) {
    unsigned char u = static_cast<unsigned char>(c);
    out += std::isalnum(u) ? static_cast<char>(std::toupper(u)) : '_';
  }
  return out;
}

v1beta1::ListAndWatchResponse BuildDeviceList(const std::vector<AdvertisedDevice>& devices) {
  v1beta1::ListAndWatchResponse list;
  for (const AdvertisedDevice& a : devices) {
    v1beta1::Device* d = list.add_devices();
    d->set_id(a.device.id);
    d->set_health(a.healthy ? kHealthy : kUnhealthy);
    if (a.device.numa_node >= 0) d->mutable_topology()->add_nodes()->set_id(a.device.numa_node);
  }
  return list;
}

namespace {
std::string SocketFileName(const std::string& socket_path) {
  size_t slash = socket_path.find_last_of('/');
  return slash == std::string::npos ? socket_path : socket_path.substr(slash + 1);
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) {
    if (!out.empty()) out += ',';
    out += p;
  }
  return out;
}
}  // namespace

Result<v1beta1::ContainerAllocateResponse> BuildContainerAllocation(
    const std::string& device_class, const std::vector<std::string>& requested_ids,
    const std::vector<AdvertisedDevice>& known_devices) {
  if (requested_ids.empty()) {
    return MakeError(EINVAL, "container request for " + device_class + " names no device");
  }
  std::vector<std::string> ids = requested_ids;
  std::sort(ids.begin(), ids.end());
  if (auto dup = std::adjacent_find(ids.begin(), ids.end()); dup != ids.end()) {
    return MakeError(EINVAL, "device '" + *dup + "' is requested twice");
  }
  std::map<std::string, const AdvertisedDevice*> by_id;
  for (const AdvertisedDevice& a : known_devices) by_id[a.device.id] = &a;

  v1beta1::ContainerAllocateResponse response;
  std::vector<std::string> container_sockets;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = by_id.find(ids[i]);
    if (it == by_id.end()) {
      return MakeError(ENOENT, "unknown " + device_class + " device '" + ids[i] +
                                   "' (not served by the vfio-user-server)");
    }
    const AdvertisedDevice& a = *it->second;
    if (!a.healthy) {
      return MakeError(
          EAGAIN, device_class + " device '" + ids[i] + "' is unhealthy: " + a.unhealthy_reason);
    }
    std::string container_dir =
        std::string(kContainerSocketRoot) + "/" + device_class + "/" + std::to_string(i);
    v1beta1::Mount* mount = response.add_mounts();
    mount->set_container_path(container_dir);
    mount->set_host_path(SocketDirectory(a.device.socket_path));
    mount->set_read_only(false);  // connecting to a unix socket needs write access
    container_sockets.push_back(container_dir + "/" + SocketFileName(a.device.socket_path));
  }
  std::string prefix = EnvVarPrefix(device_class);
  (*response.mutable_envs())[prefix + "_SOCKETS"] = Join(container_sockets);
  (*response.mutable_envs())[prefix + "_DEVICE_IDS"] = Join(ids);
  return response;
}

namespace {
struct Candidate {
  std::string id;
  std::optional<int32_t> numa;  // nullopt: topology not used
  uint32_t poll_thread = 0;
  bool known = false;
};

using GroupKey = std::function<int64_t(const Candidate&)>;

// Takes `needed` candidates, grouping by keys[level] and recursing into the next level inside
// each chosen group. Groups that already hold must-include devices come first, then the
// smallest group that holds all that is needed, then the largest ones.
void Pick(std::vector<Candidate> candidates, size_t needed, const std::vector<GroupKey>& keys,
          size_t level, const std::vector<std::set<int64_t>>& preferred,
          std::vector<std::string>* out) {
  if (needed == 0 || candidates.empty()) return;
  if (level == keys.size()) {
    std::sort(candidates.begin(), candidates.end(),
              [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
    for (size_t i = 0; i < needed && i < candidates.size(); ++i) out->push_back(candidates[i].id);
    return;
  }
  std::map<int64_t, std::vector<Candidate>> groups;
  for (Candidate& c : candidates) groups[keys[level](c)].push_back(std::move(c));
  std::vector<std::pair<int64_t, std::vector<Candidate>*>> order;
  order.reserve(groups.size());
  for (auto& [key, members] : groups) order.emplace_back(key, &members);
  auto rank = [&](const std::pair<int64_t, std::vector<Candidate>*>& g) {
    bool is_preferred = preferred[level].count(g.first) > 0;
    bool fits = g.second->size() >= needed;
    // Smaller rank first: preferred groups, then fitting groups by size ascending, then the
    // others by size descending.
    int64_t size = static_cast<int64_t>(g.second->size());
    return std::tuple<int, int64_t, int64_t>(is_preferred ? 0 : (fits ? 1 : 2),
                                             is_preferred ? 0 : (fits ? size : -size), g.first);
  };
  std::sort(order.begin(), order.end(),
            [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
  size_t remaining = needed;
  for (auto& [key, members] : order) {
    if (remaining == 0) break;
    size_t take = std::min(remaining, members->size());
    size_t before = out->size();
    Pick(std::move(*members), take, keys, level + 1, preferred, out);
    remaining -= out->size() - before;
  }
}
}  // namespace

std::vector<std::string> PreferredAllocation(const std::vector<std::string>& available,
                                             const std::vector<std::string>& must_include, int size,
                                             const std::vector<AdvertisedDevice>& known_devices) {
  std::vector<std::string> out;
  std::set<std::string> taken;
  for (const std::string& id : must_include) {
    if (taken.insert(id).second) out.push_back(id);
  }
  if (size <= 0 || out.size() >= static_cast<size_t>(size)) return out;
  size_t needed = static_cast<size_t>(size) - out.size();

  std::map<std::string, const AdvertisedDevice*> by_id;
  for (const AdvertisedDevice& a : known_devices) by_id[a.device.id] = &a;
  std::vector<Candidate> known, unknown;
  bool all_numa_known = true;
  for (const std::string& id : available) {
    if (taken.count(id)) continue;
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      unknown.push_back({id, std::nullopt, 0, false});
      continue;
    }
    const ServerDevice& d = it->second->device;
    if (d.numa_node < 0) all_numa_known = false;
    known.push_back({id, d.numa_node, d.poll_thread, true});
    taken.insert(id);
  }

  std::vector<GroupKey> keys;
  if (all_numa_known && !known.empty()) {
    keys.push_back([](const Candidate& c) { return static_cast<int64_t>(*c.numa); });
  }
  keys.push_back([](const Candidate& c) { return static_cast<int64_t>(c.poll_thread); });
  // The groups of the devices the container must get anyway are the first choice, per level.
  std::vector<std::set<int64_t>> preferred(keys.size());
  for (const std::string& id : must_include) {
    auto it = by_id.find(id);
    if (it == by_id.end()) continue;
    const ServerDevice& d = it->second->device;
    Candidate c{id, d.numa_node, d.poll_thread, true};
    if (keys.size() == 2 && d.numa_node < 0) continue;
    for (size_t level = 0; level < keys.size(); ++level) preferred[level].insert(keys[level](c));
  }

  Pick(std::move(known), needed, keys, 0, preferred, &out);
  std::sort(unknown.begin(), unknown.end(),
            [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  for (const Candidate& c : unknown) {
    if (out.size() >= static_cast<size_t>(size)) break;
    out.push_back(c.id);
  }
  return out;
}

}  // namespace vfu::deviceplugin
