// Scraping /metrics the way Prometheus does (HTTP GET over loopback TCP) and reading samples
// out of the text exposition format, for the metrics tests.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace vfu::testing {

// The body of GET http://127.0.0.1:<port><path>, or nullopt when the request failed.
std::optional<std::string> HttpGet(int port, const std::string& path = "/metrics");

// The value of the sample `name` whose labels include all of `labels` (other labels may be
// present), or nullopt.
std::optional<double> FindSample(const std::string& exposition, const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});

// The `# TYPE name kind` line's kind, or an empty string.
std::string FamilyType(const std::string& exposition, const std::string& name);

}  // namespace vfu::testing
