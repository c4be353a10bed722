// expect: TransientUnitProcess(sdfutures::exec, ...): the function must be a function pointer
#include <sdfutures/sdfutures.hpp>

int main() {
    int state = 3;
    sdfutures::TransientUnitProcess process(sdfutures::exec, {}, [state](int x) { return x + state; }, 1);
    process.start();
    return process.result();
}
