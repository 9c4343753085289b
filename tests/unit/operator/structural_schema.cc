#include "tests/unit/operator/structural_schema.h"

#include <yaml-cpp/yaml.h>

#include <regex>

namespace vfu::op::testing {
namespace {

using Json = nlohmann::json;

Json Convert(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& kv : node) out[kv.first.as<std::string>()] = Convert(kv.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const auto& item : node) out.push_back(Convert(item));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& text = node.Scalar();
      if (node.Tag() != "?") return text;  // quoted or tagged: a string
      static const std::regex kInt("^[-+]?[0-9]+$");
      static const std::regex kFloat("^[-+]?([0-9]*\\.[0-9]+|[0-9]+\\.?[0-9]*)([eE][-+]?[0-9]+)?$");
      if (text == "true" || text == "True" || text == "TRUE") return true;
      if (text == "false" || text == "False" || text == "FALSE") return false;
      if (text == "null" || text == "Null" || text == "NULL" || text == "~") return nullptr;
      if (std::regex_match(text, kInt)) return std::stoll(text);
      if (std::regex_match(text, kFloat)) return std::stod(text);
      return text;
    }
    default:
      return nullptr;
  }
}

std::string Describe(const Json& value) {
  std::string text = value.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

void Validate(const Json& schema, const Json& value, const std::string& path,
              std::vector<std::string>& errors) {
  auto fail = [&](const std::string& message) {
    errors.push_back((path.empty() ? "<root>" : path) + ": " + message);
  };
  const bool int_or_string = schema.value("x-kubernetes-int-or-string", false);
  const std::string type = schema.value("type", "");
  if (int_or_string) {
    if (!value.is_number_integer() && !value.is_string()) {
      return fail("must be an integer or a string, not " + Describe(value));
    }
  } else if (type == "object") {
    if (!value.is_object()) return fail("must be an object");
  } else if (type == "array") {
    if (!value.is_array()) return fail("must be an array");
  } else if (type == "string") {
    if (!value.is_string()) return fail("must be a string, not " + Describe(value));
  } else if (type == "integer") {
    if (!value.is_number_integer()) return fail("must be an integer, not " + Describe(value));
  } else if (type == "number") {
    if (!value.is_number()) return fail("must be a number, not " + Describe(value));
  } else if (type == "boolean") {
    if (!value.is_boolean()) return fail("must be a boolean, not " + Describe(value));
  }

  if (schema.contains("enum")) {
    bool found = false;
    for (const auto& allowed : schema["enum"]) found = found || allowed == value;
    if (!found)
      fail("unsupported value " + Describe(value) + " (allowed: " + schema["enum"].dump() + ")");
  }
  if (value.is_number()) {
    if (schema.contains("minimum") && value.get<double>() < schema["minimum"].get<double>()) {
      fail("must be >= " + schema["minimum"].dump());
    }
    if (schema.contains("maximum") && value.get<double>() > schema["maximum"].get<double>()) {
      fail("must be <= " + schema["maximum"].dump());
    }
  }
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (schema.contains("minLength") && text.size() < schema["minLength"].get<size_t>()) {
      fail("must be at least " + schema["minLength"].dump() + " characters");
    }
    if (schema.contains("maxLength") && text.size() > schema["maxLength"].get<size_t>()) {
      fail("must be at most " + schema["maxLength"].dump() + " characters");
    }
    if (schema.contains("pattern") &&
        !std::regex_search(text, std::regex(schema["pattern"].get<std::string>()))) {
      fail("'" + text + "' does not match " + schema["pattern"].get<std::string>());
    }
  }
  if (value.is_array()) {
    if (schema.contains("minItems") && value.size() < schema["minItems"].get<size_t>()) {
      fail("must have at least " + schema["minItems"].dump() + " items");
    }
    if (schema.contains("maxItems") && value.size() > schema["maxItems"].get<size_t>()) {
      fail("must have at most " + schema["maxItems"].dump() + " items");
    }
    if (schema.contains("items")) {
      for (size_t i = 0; i < value.size(); ++i) {
        Validate(schema["items"], value[i], path + "[" + std::to_string(i) + "]", errors);
      }
    }
  }
  if (value.is_object() && type == "object") {
    if (path == "metadata") return;  // ObjectMeta is validated by the API server itself
    if (schema.contains("required")) {
      for (const auto& field : schema["required"]) {
        if (!value.contains(field.get<std::string>())) {
          fail("required field " + field.get<std::string>() + " is missing");
        }
      }
    }
    const Json properties = schema.value("properties", Json::object());
    const bool preserve = schema.value("x-kubernetes-preserve-unknown-fields", false);
    for (const auto& [key, child] : value.items()) {
      std::string child_path = path.empty() ? key : path + "." + key;
      if (properties.contains(key)) {
        Validate(properties[key], child, child_path, errors);
      } else if (schema.contains("additionalProperties") &&
                 schema["additionalProperties"].is_object()) {
        Validate(schema["additionalProperties"], child, child_path, errors);
      } else if (!preserve) {
        errors.push_back(child_path + ": unknown field");
      }
    }
  }
}

void FindNonStructural(const Json& schema, const std::string& path, std::vector<std::string>& out) {
  if (!schema.contains("type") && !schema.value("x-kubernetes-int-or-string", false)) {
    out.push_back(path.empty() ? "<root>" : path);
  }
  if (schema.contains("properties")) {
    for (const auto& [key, child] : schema["properties"].items()) {
      FindNonStructural(child, path.empty() ? key : path + "." + key, out);
    }
  }
  if (schema.contains("items")) FindNonStructural(schema["items"], path + "[]", out);
  if (schema.contains("additionalProperties") && schema["additionalProperties"].is_object()) {
    FindNonStructural(schema["additionalProperties"], path + "{}", out);
  }
}

}  // namespace

Json YamlToJson(const std::string& yaml_text) { return Convert(YAML::Load(yaml_text)); }

std::vector<std::string> ValidateAgainstSchema(const Json& schema, const Json& value) {
  std::vector<std::string> errors;
  Validate(schema, value, "", errors);
  return errors;
}

std::vector<std::string> NonStructuralNodes(const Json& schema) {
  std::vector<std::string> out;
  FindNonStructural(schema, "", out);
  return out;
}

}  // namespace vfu::op::testing
