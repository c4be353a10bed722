#pragma once
// How a pool's workers come to be, like multiprocessing's start methods.

namespace sdfutures {

enum class StartMethod {
    // Workers forked by a fork server that is forked from the owner when the pool is constructed (the default).
    // Like any fork of a running program, the fork server copies only the constructing thread: a lock another
    // thread held at that moment (the user's own mutex, or an allocator without fork protection such as
    // AddressSanitizer's) stays locked in it and in every worker.
    fork,
    // Workers forked by a fork server that comes from a zygote sdfutures::init() forked at the start of main(),
    // while the program was single-threaded: no lock of a later thread, none of the memory the owner allocated
    // later (keys, tokens, other users' data). Needs sdfutures::init(argc, argv) first in main(), and an
    // initializer (if any) that is a plain function pointer.
    forkserver,
    // systemd itself executes the program as the unit's main process (the very file this process runs, by
    // descriptor), and that process, inside sdfutures::init(), forks the workers: nothing is attached and
    // nothing of the owner is copied, not its memory, locks, descriptors or environment. Every property
    // systemd accepts for a service applies, since systemd applied it: DynamicUser=, SystemCallFilter=,
    // RestrictAddressFamilies=, PrivateDevices=, MemoryDenyWriteExecute=, CapabilityBoundingSet=, ... Needs
    // sdfutures::init(argc, argv) as the first statement of main(); tasks and the initializer must be code of
    // the program's own executable (not of a shared library or dlopen()). The program's static constructors
    // run again in the exec'd process before main() reaches init().
    exec,
};

// The tag that asks run() and TransientUnitProcess for StartMethod::exec at compile time, where a closure (whose
// state an executed program cannot have) is refused: sdfutures::run(sdfutures::exec, properties, &f, args...).
struct exec_tag {
    explicit exec_tag() = default;
};
inline constexpr exec_tag exec{};

}  // namespace sdfutures
