#pragma once
// What every process the library forks to run user code does first, so that it holds nothing of the owner's
// process-wide state that could act in it later. Private to the library.

namespace sdfutures::detail {

// In the owner, before the library forks anything that may run user code: registers (once) the exit handler that
// makes exit() in such a child end it at once. Registered in the parent rather than in the child because
// registering takes a lock of glibc's that fork() does not reset: a child of a multithreaded owner could find it
// held for good. Registered at the first fork rather than earlier, so that it runs before the destructors of the
// statics the library had made by then (sd-bus's among them): exit handlers run in reverse order.
void prepare_exit_guard();

// In a freshly forked child (one thread): marks it as the library's, so exit() called by user code ends the
// process at once with that status after flushing the child's own output (neither the owner's atexit handlers
// registered before prepare_exit_guard() nor its static destructors, the sd-bus connections among them, run in
// it; thread_local destructors and handlers registered later still do, as glibc runs them first); drops the
// owner's unwritten stdio buffers (they would be written a second time when the child flushes); unblocks every
// signal and gives SIGCHLD its default action (an owner that ignores SIGCHLD or blocks it must not make the
// work's own children vanish or its waitpid() fail).
void detach_from_owner_state() noexcept;

// Gives SIGCHLD its default action and unblocks it: for a process that reaps its own children.
void reset_child_signal() noexcept;

}  // namespace sdfutures::detail
