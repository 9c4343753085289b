// A validator for the subset of Kubernetes structural OpenAPI v3 schemas our CRD uses, so
// that tests can check the example pools and invalid ones against the CRD as the API server
// would. Covered: type (object, array, string, integer, number, boolean), properties,
// required, additionalProperties (a schema for map values), items, enum, minimum, maximum,
// minLength, maxLength, minItems, maxItems, pattern (ECMAScript regex), and
// x-kubernetes-int-or-string. Unknown fields are errors, as with the API server's strict field
// validation (kubectl's default since 1.27; without it they would be pruned silently).
// metadata is not descended into (the API server validates ObjectMeta itself). Not covered:
// CEL rules (x-kubernetes-validations: the operator checks the same rules and reports
// InvalidSpec), format, defaults, nullable, oneOf/anyOf/allOf/not.
// YamlToJson reads YAML with YAML 1.2 core-schema typing of plain scalars (true/false, null,
// integers, floats), as the API server's YAML decoder does.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace vfu::op::testing {

nlohmann::json YamlToJson(const std::string& yaml_text);

// Returns one message per violation ("spec.devicesPerNode: must be <= 128"); empty if valid.
std::vector<std::string> ValidateAgainstSchema(const nlohmann::json& schema,
                                               const nlohmann::json& value);

// Checks that every schema node has a type (or x-kubernetes-int-or-string), as a structural
// schema must; returns the paths that do not.
std::vector<std::string> NonStructuralNodes(const nlohmann::json& schema);

}  // namespace vfu::op::testing
