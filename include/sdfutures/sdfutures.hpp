#pragma once
// sdfutures: run C++ work in systemd transient units, futures-style.

#include "sdfutures/bus.hpp"
#include "sdfutures/command.hpp"
#include "sdfutures/completion.hpp"
#include "sdfutures/completion_events.hpp"
#include "sdfutures/daemon.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/imap.hpp"
#include "sdfutures/init.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/pool.hpp"
#include "sdfutures/process.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/start_method.hpp"
#include "sdfutures/system_info.hpp"
#include "sdfutures/this_task.hpp"
#include "sdfutures/unit.hpp"
