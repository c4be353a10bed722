// expect: a process systemd executes holds nothing of this one
#include <sdfutures/sdfutures.hpp>

int main() {
    int state = 3;
    return sdfutures::run(sdfutures::exec, {}, [state](int x) { return x + state; }, 1);
}
