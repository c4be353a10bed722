#pragma once
// sdfutures::init(argc, argv): call it first in main(), before any thread starts.
//
//     int main(int argc, char** argv) {
//         sdfutures::init(argc, argv);
//         ...
//     }
//
// It forks the zygote from which pools with StartMethod::forkserver get their fork servers, while the program is
// still single-threaded and holds nothing it loads later. In the owner it returns at once. In a process systemd
// executed for a StartMethod::exec pool it never returns: it serves as that pool's fork server, before main()
// has done anything else — which is why it must come first. Without it, StartMethod::fork (the default) works as
// before, and a pool that asks for forkserver or exec fails at construction with a StateError naming the call to
// add. Calling it again, or from a child, does nothing.

namespace sdfutures {

void init(int argc, char** argv);

// Whether init() has run in this process.
bool initialized() noexcept;

}  // namespace sdfutures
