#pragma once
// What every process the library forks to run user code does first, so that it holds nothing of the owner's
// process-wide state that could act in it later. Private to the library.

namespace sdfutures::detail {

// In a freshly forked child (one thread): drops the owner's unwritten stdio buffers (they would be written a second
// time when the child flushes), unblocks every signal and gives SIGCHLD its default action (an owner that ignores
// SIGCHLD or blocks it must not make the work's own children vanish or its waitpid() fail), and arranges that
// exit() called by user code ends the process at once with that status after flushing the child's own output:
// neither the owner's atexit handlers nor its static destructors (the sd-bus connections among them) run in the
// child.
void detach_from_owner_state() noexcept;

// Gives SIGCHLD its default action and unblocks it: for a process that reaps its own children.
void reset_child_signal() noexcept;

}  // namespace sdfutures::detail
