// Sanitizer fuzz driver for the header-only core (no Python): random maps of every
// dtype, shapes from 1x1 to thin strips, few to thousands of grey levels, lam from 0 to +inf.
// Built and run under AddressSanitizer + UndefinedBehaviorSanitizer by .ci/sanitize;
// any report aborts the run. The contract itself is checked against the Python
// reference by tests/test_postprocess.py, which .ci/sanitize also runs under ASan.
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "nucseg/watershed.hpp"

namespace {

template <class T>
std::size_t run(std::mt19937& rng, int height, int width, int levels, double lam, int connectivity) {
    std::vector<T> v(static_cast<std::size_t>(height) * width);
    std::uniform_int_distribution<int> level(0, levels);
    const double top = std::is_integral<T>::value ? static_cast<double>(std::numeric_limits<T>::max()) : 1.0;
    for (auto& x : v) x = static_cast<T>(top * level(rng) / (levels > 0 ? levels : 1));
    std::vector<std::int32_t> out(v.size(), -7);
    const double threshold = 0.4 * top;
    nucseg::watershed_dynamics(v.data(), height, width, threshold, lam * top, connectivity, rng() % 2 == 0,
                               out.data(), [] { return false; });
    std::size_t objects = 0;
    for (const std::int32_t label : out) {
        if (label < 0) std::abort();  // every pixel is background, line or an object
        objects = label > static_cast<std::int32_t>(objects) ? static_cast<std::size_t>(label) : objects;
    }
    return objects;
}

}  // namespace

int main(int argc, char** argv) {
    const long cases = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 20000;
    std::mt19937 rng(12345);
    const double lams[] = {0.0, 0.05, 0.2, 0.5, std::numeric_limits<double>::infinity()};
    std::size_t objects = 0;
    for (long i = 0; i < cases; ++i) {
        int height = 1 + static_cast<int>(rng() % 48), width = 1 + static_cast<int>(rng() % 48);
        if (i % 10 == 0) height = 1;                       // 1xN
        if (i % 10 == 1) width = 1;                        // Nx1
        if (i % 10 == 2) width = 1 + static_cast<int>(rng() % 2000), height = 1 + static_cast<int>(rng() % 3);
        // 0 levels: constant map; few levels: plateaus; hundreds: components with many
        // tied keys (the sorted queue's stamp mode for 16-bit and float maps).
        const int levels = i % 3 == 0 ? 100 + static_cast<int>(rng() % 3000) : static_cast<int>(rng() % 9);
        const double lam = lams[rng() % 5];
        const int connectivity = 1 + static_cast<int>(rng() % 2);
        switch (i % 4) {
            case 0: objects += run<std::uint8_t>(rng, height, width, levels, lam, connectivity); break;
            case 1: objects += run<std::uint16_t>(rng, height, width, levels, lam, connectivity); break;
            case 2: objects += run<float>(rng, height, width, levels, lam, connectivity); break;
            default: objects += run<double>(rng, height, width, levels, lam, connectivity); break;
        }
    }
    std::printf("fuzz_watershed: %ld cases, %zu objects, no sanitizer report\n", cases, objects);
    return 0;
}
