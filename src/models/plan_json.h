#pragma once
// A Plan as JSON, for engine files: everything a session needs to run it (ops, buffers, weight shapes), so a
// loaded engine never re-derives the plan from a checkpoint. Weight sources are kept too, so the plan prints
// (`kestrel inspect --plan`) the same as one built from the checkpoint.
// plan_from_json checks every field's presence, type and range; a problem is a kestrel::Error naming
// `source`.
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "models/plan.h"

namespace kestrel {

nlohmann::json plan_to_json(const Plan& plan);
Plan plan_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace kestrel
