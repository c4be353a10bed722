#pragma once
// Which unit properties a pool or process accepts, by how its work comes to run in the unit. Private to the
// library; the public half (property_reach, check_properties_reach_forked_children) is in process.hpp.

#include "sdfutures/properties.hpp"
#include "sdfutures/start_method.hpp"

namespace sdfutures {

// Not root: refuses, by name, what a user's own manager cannot apply or would silently skip (User=, Group=,
// SupplementaryGroups=, the namespace properties; docs/unprivileged.md).
void check_properties_a_user_manager_honours(const Properties& properties);

namespace detail {

// fork, forkserver: what reaches a forked child (check_properties_reach_forked_children). exec: every property
// systemd accepts for a service, except those the library owns (Type=, Exec*=, Standard*=, Restart=, ...).
// Throws UnsupportedProperty naming the first refused one.
void check_properties_for_start_method(const Properties& properties, StartMethod method);

}  // namespace detail
}  // namespace sdfutures
