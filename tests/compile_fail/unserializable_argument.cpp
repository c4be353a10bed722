// expect: every argument of a pool task must be serializable
#include <sdfutures/sdfutures.hpp>

int square(int* x) { return *x * *x; }

int main() {
    sdfutures::TransientUnitPoolExecutor pool({});
    int x = 3;
    auto f = pool.submit(&square, &x);
}
