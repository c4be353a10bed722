// expect: use sdfutures::TransientUnitProcess / sdfutures::run for closures
#include <sdfutures/sdfutures.hpp>

int main() {
    sdfutures::TransientUnitPoolExecutor pool({});
    int state = 3;
    auto f = pool.submit([state](int x) { return x + state; }, 1);
}
