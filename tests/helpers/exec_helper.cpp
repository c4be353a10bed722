// A program for the StartMethod::exec tests that must be a program of their own: one that never calls
// sdfutures::init(), and one whose executable is replaced on disk before it builds its pool. It prints one line.
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "sdfutures/sdfutures.hpp"

namespace {

int square(int x) { return x * x; }

int build_pool_and_square() {
    try {
        sdfutures::TransientUnitPoolExecutor pool({}, {.max_workers = 1, .start_method = sdfutures::StartMethod::exec});
        std::cout << pool.submit(&square, 7).get() << std::endl;
        return 0;
    } catch (const std::exception& e) {
        std::cout << "error: " << e.what() << std::endl;
        return 1;
    }
}

}  // namespace

int main(int argc, char** argv) {
    const std::string kind = argc > 1 ? argv[1] : "";
    if (kind == "no-init") return build_pool_and_square();  // sdfutures::init() deliberately left out
    sdfutures::init(argc, argv);
    if (kind == "replaced") {
        // Another program takes this one's path, as an upgrade that renames a new build into place would.
        const std::string self = argv[2];
        const std::string next = self + ".new";
        {
            std::ofstream out(next);
            out << "#!/bin/sh\necho 'a replaced binary ran'\n";
        }
        ::chmod(next.c_str(), 0755);
        if (::rename(next.c_str(), self.c_str()) != 0) {
            std::cout << "error: rename: " << std::strerror(errno) << std::endl;
            return 1;
        }
        return build_pool_and_square();
    }
    std::cerr << "unknown kind " << kind << "\n";
    return 2;
}
